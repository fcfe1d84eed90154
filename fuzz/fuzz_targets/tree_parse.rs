//! A tree is read back from the store at commit and at restore: parsing hostile bytes must
//! never panic, and whatever parses must hold only safe paths and re-serialize to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_core::tree::{Tree, validate_path};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(tree) = Tree::parse(bytes) {
        for e in &tree.entries {
            assert!(validate_path(&e.path).is_ok());
        }
        let again = tree.serialize().expect("a parsed tree serializes");
        assert_eq!(Tree::parse(&again).expect("round trip"), tree);
    }
});
