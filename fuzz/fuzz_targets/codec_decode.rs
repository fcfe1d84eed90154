//! A chunk blob comes from the network (uploads) or from disk (packs): decoding must never
//! panic, never produce more than the maximum chunk size, and never more than it declares.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_core::{chunker::MAX_SIZE, codec};

fuzz_target!(|blob: &[u8]| {
    if let Ok(data) = codec::decode(blob) {
        assert!(data.len() <= MAX_SIZE);
        assert_eq!(Some(data.len()), codec::declared_len(blob).ok());
    }
});
