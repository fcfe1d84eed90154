//! Encryption at rest: a stolen store (every object of a local directory or a bucket)
//! holds none of the source's bytes, names or paths, and no plaintext chunk id in an
//! object name; the recovery key, and nothing less, unwraps the data key with the
//! standard `age` tool and opens the chunks; a store made before encryption keeps
//! working.

use std::path::Path;
use std::process::Command;

use lifeboat_core::seal::DataKey;
use lifeboat_core::{ChunkId, codec};
use lifeboat_tests::Fleet;
use lifeboat_tests::s3::S3Server;
use lifeboat_tests::tree::Rng;

/// A source whose bytes are random (stored raw: no compression hides them), in files
/// and directories with telling names.
fn secret_source(dir: &Path, rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    std::fs::create_dir_all(dir.join("payroll-db-7/customers")).expect("dirs");
    for i in 0..6 {
        let rel = format!("payroll-db-7/customers/ledger-{i}.bin");
        // Under the minimum chunk size: one chunk per file, so chunk ids are the files'.
        let data = rng.bytes(150_000 + i * 1000);
        std::fs::write(dir.join(&rel), &data).expect("write");
        files.push((rel, data));
    }
    files
}

/// Every object of the store, by key.
fn every_object(
    store: &dyn lifeboat_controller::store::objects::Objects,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for prefix in ["packs/", "snapshots/", "keys/", "damaged/"] {
        for o in store.list(prefix).expect("list") {
            let bytes = store.get(&o.key, "").expect("get");
            out.push((o.key, bytes));
        }
    }
    out
}

/// What a thief of the store could learn: source bytes (any 32-byte window from several
/// places in every file), the names on the source, or a chunk id in an object's name.
fn leaks(
    objects: &[(String, Vec<u8>)],
    files: &[(String, Vec<u8>)],
    chunk_ids: &[String],
) -> Vec<String> {
    let mut found = Vec::new();
    for (key, bytes) in objects {
        for (rel, data) in files {
            for at in [0, data.len() / 3, data.len() / 2, data.len() - 32] {
                let window = &data[at..at + 32];
                if bytes.windows(32).any(|w| w == window) {
                    found.push(format!("{key} holds bytes of {rel} at {at}"));
                }
            }
        }
        for name in ["payroll-db-7", "customers", "ledger-3.bin", "secret-host"] {
            if bytes.windows(name.len()).any(|w| w == name.as_bytes()) {
                found.push(format!("{key} holds the name {name:?}"));
            }
        }
        for id in chunk_ids {
            if key.contains(id.as_str()) {
                found.push(format!("object name {key} holds chunk id {id}"));
            }
        }
    }
    found
}

fn backed_up_fleet(fleet: &mut Fleet, src: &Path, root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = secret_source(src, &mut Rng::new(31));
    let a = fleet.enroll("secret-host");
    fleet.run_agent(&a, &[("data", src)], &[root]);
    fleet.backup("secret-host", "data");
    files
}

fn restores_whole(fleet: &Fleet, root: &Path, tag: &str, files: &[(String, Vec<u8>)]) {
    let snaps = fleet.cli_json(&["snapshots"]);
    let id = snaps[0]["id"].as_str().expect("id");
    let target = root.join(tag);
    let (ok, job) = fleet.job(&[
        "restore",
        id,
        "--agent",
        "secret-host",
        "--to",
        target.to_str().expect("path"),
    ]);
    assert!(ok, "{job}");
    for (rel, data) in files {
        assert_eq!(
            &std::fs::read(target.join(rel)).expect("restored"),
            data,
            "{rel}"
        );
    }
}

fn chunk_ids(fleet: &Fleet) -> Vec<String> {
    fleet
        .chunk_index()
        .into_iter()
        .map(|(id, _, _, _)| id)
        .collect()
}

#[test]
fn a_stolen_local_store_holds_no_plaintext_and_a_legacy_store_still_works() {
    // The encrypted store (every new one).
    let mut fleet = Fleet::start();
    let (src, root) = (fleet.path("src"), fleet.path("restore"));
    let files = backed_up_fleet(&mut fleet, &src, &root);
    assert!(
        fleet.recovery_key.is_some(),
        "a new store shows its recovery key once"
    );
    let store = lifeboat_controller::store::objects::LocalDir::open(&fleet.path("ctl/store"))
        .expect("store");
    let objects = every_object(&store);
    assert!(objects.iter().any(|(k, _)| k.starts_with("packs/")));
    let leaked = leaks(&objects, &files, &chunk_ids(&fleet));
    assert!(leaked.is_empty(), "an encrypted store leaks: {leaked:#?}");
    restores_whole(&fleet, &root, "first", &files);
    // Restarting reads the wrapped key back, and shows no key.
    fleet.recovery_key = None;
    fleet.stop_controller();
    fleet.start_controller();
    assert!(
        fleet.recovery_key.is_none(),
        "the key is shown at the first start only"
    );
    restores_whole(&fleet, &root, "after-restart", &files);

    // A store created before encryption at rest (its settings say nothing of keys) stays
    // plaintext and keeps backing up and restoring; the same search finds the source in
    // it, which is what shows the search above could fail.
    let legacy_dir = tempfile::Builder::new()
        .prefix("lifeboat-legacy-")
        .tempdir()
        .expect("dir");
    let ctl = legacy_dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).expect("ctl");
    let settings = serde_json::json!({"version": 1, "store": ctl.join("store")});
    std::fs::write(ctl.join("controller.json"), settings.to_string()).expect("settings");
    let mut legacy = Fleet::start_in(legacy_dir);
    assert!(
        legacy.recovery_key.is_none(),
        "no key for a plaintext store"
    );
    let status = legacy.cli_json(&["status"]);
    assert_eq!(status["store_encrypted"], false, "{status}");
    assert!(!legacy.path("ctl/store-key.age").exists());
    let (src, root) = (legacy.path("src"), legacy.path("restore"));
    let files = backed_up_fleet(&mut legacy, &src, &root);
    let store = lifeboat_controller::store::objects::LocalDir::open(&legacy.path("ctl/store"))
        .expect("store");
    let leaked = leaks(&every_object(&store), &files, &[]);
    assert!(
        !leaked.is_empty(),
        "a plaintext store holds the source's bytes"
    );
    restores_whole(&legacy, &root, "legacy", &files);
}

#[test]
fn a_stolen_bucket_holds_no_plaintext() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "stolen", &[]);
    let (src, root) = (fleet.path("src"), fleet.path("restore"));
    let files = backed_up_fleet(&mut fleet, &src, &root);
    let staging = tempfile::tempdir().expect("staging");
    let bucket = s3.objects("stolen", staging.path());
    let objects = every_object(bucket.as_ref());
    assert!(objects.iter().any(|(k, _)| k.starts_with("packs/")));
    assert!(
        objects.iter().any(|(k, _)| k == "keys/store-key.age"),
        "the bucket keeps the wrapped data key"
    );
    let leaked = leaks(&objects, &files, &chunk_ids(&fleet));
    assert!(leaked.is_empty(), "an encrypted bucket leaks: {leaked:#?}");
    restores_whole(&fleet, &root, "s3", &files);
}

fn age_tool() -> bool {
    let found = Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_AGE").is_none(),
            "the age tool is not installed (Debian: apt-get install age)"
        );
        eprintln!(
            "\n!!! SKIPPED: this test needs the age tool (apt-get install age)\n!!! set LIFEBOAT_REQUIRE_AGE=1 to make this a failure\n"
        );
    }
    found
}

/// The operator's recovery key, with the standard `age` tool, unwraps the data key from
/// the copy in the store; that key opens a stored chunk to the source's bytes. The
/// controller's own copy of the wrapped key is the same file.
#[test]
fn the_recovery_key_unwraps_the_data_key_with_the_age_tool() {
    if !age_tool() {
        return;
    }
    // The operator made the recovery key on another machine and gave its public half.
    let keys = tempfile::tempdir().expect("keys");
    let key_file = keys.path().join("recovery.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key_file)
        .output()
        .expect("age-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipient = String::from_utf8_lossy(&out.stderr)
        .trim()
        .strip_prefix("Public key: ")
        .expect("age-keygen prints the public key")
        .to_string();
    let mut fleet = Fleet::start_with(&["--recovery-recipient", &recipient]);
    assert!(
        fleet.recovery_key.is_none(),
        "the operator's own key is never shown"
    );
    let status = fleet.cli_json(&["status"]);
    assert_eq!(status["store_encrypted"], true, "{status}");
    assert_eq!(status["recovery_recipient"], recipient.as_str(), "{status}");
    let (src, root) = (fleet.path("src"), fleet.path("restore"));
    let files = backed_up_fleet(&mut fleet, &src, &root);

    let in_store = fleet.path("ctl/store/keys/store-key.age");
    assert_eq!(
        std::fs::read(&in_store).expect("store copy"),
        std::fs::read(fleet.path("ctl/store-key.age")).expect("controller copy")
    );
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key_file)
        .arg(&in_store)
        .output()
        .expect("age -d");
    assert!(
        out.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data_key = DataKey::from_slice(&out.stdout).expect("a 32-byte data key");

    // Any other identity is refused.
    let stranger = keys.path().join("stranger.txt");
    assert!(
        Command::new("age-keygen")
            .arg("-o")
            .arg(&stranger)
            .output()
            .expect("keygen")
            .status
            .success()
    );
    let refused = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&stranger)
        .arg(&in_store)
        .output()
        .expect("age");
    assert!(
        !refused.status.success(),
        "a stranger's key unwrapped the data key"
    );

    // With the data key, every chunk of the source opens from the packs alone.
    let chunk_key = lifeboat_core::ChunkKey::from_slice(
        &std::fs::read(fleet.path("ctl/chunk.key")).expect("chunk key"),
    )
    .expect("chunk key");
    let mut opened = 0;
    for (rel, data) in &files {
        let id: ChunkId = chunk_key.id_of(data);
        let Some((_, pack, offset, length)) = fleet
            .chunk_index()
            .into_iter()
            .find(|(hex_id, ..)| *hex_id == id.to_string())
        else {
            panic!("{rel} is not one chunk in the index");
        };
        let bytes = std::fs::read(fleet.pack_path(&pack)).expect("pack");
        let sealed = &bytes[offset as usize..(offset + length) as usize];
        let blob = data_key.open_chunk(&id, sealed).expect("opens");
        assert_eq!(
            &codec::decode_verified(&chunk_key, &id, &blob).expect("decodes"),
            data,
            "{rel}"
        );
        opened += 1;
    }
    assert_eq!(opened, files.len());
}
