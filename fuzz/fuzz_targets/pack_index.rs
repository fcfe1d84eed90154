//! Pack trailers are read from the store by rebuild-catalog: a damaged or hostile pack must
//! be refused with an error, never a panic or an entry pointing outside the data area.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_core::pack;

fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.pack");
    std::fs::write(&path, bytes).expect("write");
    if let Ok(entries) = pack::read_index(&path) {
        for e in entries {
            assert!(e.offset + e.length as u64 <= bytes.len() as u64);
        }
    }
});
