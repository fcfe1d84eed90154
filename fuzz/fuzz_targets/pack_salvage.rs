//! `pack_salvage`: see the function of that name in `../checks.rs` for what it asserts.
#![no_main]
include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pack_salvage(bytes));
