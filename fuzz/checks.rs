// What each fuzz target asserts about one input, shared by the targets
// (`fuzz_targets/*.rs`) and the test that replays the kept corpus on every run
// (`refusals::b2_every_kept_fuzz_input_is_refused_or_parsed_soundly`): both `include!`
// this file.

/// A chunk blob comes from the network (uploads) or from disk (packs): decoding must never
/// panic, never produce more than the maximum chunk size, and never more than it declares.
#[allow(dead_code)]
pub fn codec_decode(blob: &[u8]) {
    use lifeboat_core::{chunker::MAX_SIZE, codec};
    if let Ok(data) = codec::decode(blob) {
        assert!(data.len() <= MAX_SIZE);
        assert_eq!(Some(data.len()), codec::declared_len(blob).ok());
    }
}

/// Snapshot envelopes are read from the store (rebuild-catalog, restore): parsing must never
/// panic, and a parsed envelope must serialize back to the same bytes.
#[allow(dead_code)]
pub fn envelope_parse(bytes: &[u8]) {
    use lifeboat_core::snapshot::{Envelope, Record};
    if let Ok(env) = Envelope::parse(bytes) {
        assert_eq!(env.to_bytes(), bytes);
        let _ = env.verify(&env.public_key, &env.public_key);
    }
    let _ = Record::parse(bytes);
}

/// Pack trailers are read from the store by rebuild-catalog: a damaged or hostile pack must
/// be refused with an error, never a panic or an entry pointing outside the data area.
#[allow(dead_code)]
pub fn pack_index(bytes: &[u8]) {
    use lifeboat_core::pack;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.pack");
    std::fs::write(&path, bytes).expect("write");
    if let Ok(entries) = pack::read_index(&path) {
        for e in entries {
            assert!(e.offset + e.length as u64 <= bytes.len() as u64);
        }
    }
}

/// A tree is read back from the store at commit and at restore: parsing hostile bytes must
/// never panic, and whatever parses must hold only safe paths and re-serialize to itself.
#[allow(dead_code)]
pub fn tree_parse(bytes: &[u8]) {
    use lifeboat_core::tree::{Tree, validate_path};
    if let Ok(tree) = Tree::parse(bytes) {
        for e in &tree.entries {
            assert!(validate_path(&e.path).is_ok());
        }
        let again = tree.serialize().expect("a parsed tree serializes");
        assert_eq!(Tree::parse(&again).expect("round trip"), tree);
    }
}

/// A pack whose trailer is lost is walked blob by blob by rebuild-catalog (`salvage`): a
/// hostile one must give back only entries inside the file, never a panic.
#[allow(dead_code)]
pub fn pack_salvage(bytes: &[u8]) {
    use lifeboat_core::{ChunkKey, pack};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.pack");
    std::fs::write(&path, bytes).expect("write");
    let key = ChunkKey::from_slice(&[7; 32]).expect("key");
    for e in pack::salvage(&path, &key, None).expect("salvage reads the file") {
        assert!(e.offset.checked_add(e.length as u64).is_some_and(|end| end <= bytes.len() as u64));
    }
}
