//! Snapshot envelopes are read from the store (rebuild-catalog, restore): parsing must never
//! panic, and a parsed envelope must serialize back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_core::snapshot::{Envelope, Record};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(env) = Envelope::parse(bytes) {
        assert_eq!(env.to_bytes(), bytes);
        let _ = env.verify(&env.public_key, &env.public_key);
    }
    let _ = Record::parse(bytes);
});
