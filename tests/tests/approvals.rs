//! Four eyes for destruction (issue 19, item 6): with `--require-approval`, deleting a
//! snapshot or a policy, lifting a quarantine, forcing a quarantined restore point and
//! revoking an admin become requests a second admin must approve; the requester cannot
//! approve their own; an approval is used once; rejected and expired requests let nothing
//! through; every step is audited.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use lifeboat_tests::{Fleet, bin};
use serde_json::Value;

/// `lifeboat ARGS` as the identity in `identity`.
fn as_admin(fleet: &Fleet, identity: &Path, args: &[&str]) -> Output {
    bin("lifeboat")
        .args(args)
        .env("LIFEBOAT_IDENTITY", identity)
        .env("LIFEBOAT_CONTROLLER", &fleet.url)
        .output()
        .expect("run lifeboat")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The approval requests, as the first admin lists them.
fn approvals(fleet: &Fleet) -> Vec<Value> {
    fleet
        .cli_json(&["approvals"])
        .as_array()
        .cloned()
        .expect("approvals")
}

fn request(fleet: &Fleet, action: &str, target: &str) -> Value {
    approvals(fleet)
        .into_iter()
        .find(|a| a["action"] == action && a["target"] == target && a["state"] == "pending")
        .unwrap_or_else(|| panic!("no pending {action} {target}: {:?}", approvals(fleet)))
}

#[test]
fn destruction_needs_a_second_admin() {
    let mut fleet = Fleet::start_with(&["--require-approval", "--approval-ttl", "20s"]);
    let second = fleet.path("second.identity");
    let out = fleet.cli(&[
        "identity",
        "create",
        "second",
        "--role",
        "admin",
        "--out",
        second.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("f"), "one").expect("write");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    let s1 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::fs::write(src.path().join("f"), "two").expect("write");
    let s2 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // The first attempt becomes a request; asking again does not make a second one.
    let out = fleet.cli(&["snapshots", "delete", &s1]);
    assert!(!out.status.success(), "deleted without approval");
    assert!(
        stderr(&out).contains("approval required"),
        "{}",
        stderr(&out)
    );
    let req = request(&fleet, "snapshot.delete", &s1);
    let id = req["id"].as_str().expect("id").to_string();
    assert_eq!(req["requester"], "admin");
    assert!(
        stderr(&out).contains(&format!("lifeboat approve {id}")),
        "{}",
        stderr(&out)
    );
    assert!(!fleet.cli(&["snapshots", "delete", &s1]).status.success());
    assert_eq!(approvals(&fleet).len(), 1);

    // Not by the requester; by another admin; used once.
    let out = fleet.cli(&["approve", &id]);
    assert!(!out.status.success(), "approved own request");
    assert!(stderr(&out).contains("another admin"), "{}", stderr(&out));
    let out = as_admin(&fleet, &second, &["approve", &id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decided: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(decided["state"], "approved");
    assert_eq!(decided["decided_by"], "second");
    let out = fleet.cli(&["snapshots", "delete", &s1]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = fleet.cli_json(&["snapshots"]);
    assert!(
        !listed
            .as_array()
            .expect("list")
            .iter()
            .any(|s| s["id"] == s1.as_str()),
        "{listed}"
    );
    assert!(
        approvals(&fleet)
            .iter()
            .any(|a| a["id"] == id.as_str() && a["state"] == "used")
    );

    // A rejected request lets nothing through; the next attempt asks again.
    assert!(!fleet.cli(&["snapshots", "delete", &s2]).status.success());
    let rejected = request(&fleet, "snapshot.delete", &s2)["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        as_admin(&fleet, &second, &["reject", &rejected])
            .status
            .success()
    );
    assert!(!fleet.cli(&["snapshots", "delete", &s2]).status.success());
    let again = request(&fleet, "snapshot.delete", &s2)["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(again, rejected);

    // The other gated actions ask too: a policy, a quarantine lifted, an admin revoked.
    fleet
        .apply_policy("[[policy]]\nname = \"p\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\n");
    let out = fleet.cli(&["policy", "delete", "p"]);
    assert!(
        stderr(&out).contains("approval required"),
        "{}",
        stderr(&out)
    );
    assert!(
        fleet
            .cli_json(&["policy", "list"])
            .as_array()
            .is_some_and(|p| p.len() == 1)
    );
    let out = fleet.cli(&[
        "snapshots",
        "quarantine",
        "--agent",
        "a",
        "--after",
        "1h",
        "--clear",
    ]);
    assert!(
        stderr(&out).contains("approval required"),
        "{}",
        stderr(&out)
    );
    let out = as_admin(&fleet, &second, &["identity", "revoke", "admin"]);
    assert!(
        stderr(&out).contains("approval required"),
        "{}",
        stderr(&out)
    );
    assert!(
        fleet.cli(&["status"]).status.success(),
        "the first admin still works"
    );
    // Forcing a quarantined restore point, as a restore or in a plan.
    let out = fleet.cli(&["snapshots", "quarantine", "--agent", "a", "--after", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = src.path().join("back");
    let out = fleet.cli(&[
        "restore",
        &s2,
        "--agent",
        "a",
        "--to",
        target.to_str().expect("path"),
        "--force",
    ]);
    assert!(
        stderr(&out).contains("approval required"),
        "{}",
        stderr(&out)
    );
    let out = fleet.cli(&[
        "recover", "plan", "--agent", "a", "--before", "0s", "--force",
    ]);
    assert!(
        stderr(&out).contains("approval required"),
        "{}",
        stderr(&out)
    );
    let policy_req = request(&fleet, "policy.delete", "p")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Requests expire, approved or not.
    std::thread::sleep(Duration::from_secs(21));
    let out = as_admin(&fleet, &second, &["approve", &policy_req]);
    assert!(!out.status.success(), "an expired request was approved");
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Every step is in the audit log.
    let audit = fleet.cli_json(&["audit"]);
    let count = |action: &str, outcome: &str| {
        audit
            .as_array()
            .expect("audit")
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert!(count("approval.request", "ok") >= 7, "{audit}");
    assert_eq!(count("approval.approve", "ok"), 1, "{audit}");
    assert_eq!(
        count("approval.approve", "denied"),
        2,
        "own, then expired: {audit}"
    );
    assert_eq!(count("approval.reject", "ok"), 1, "{audit}");
    assert_eq!(count("approval.used", "ok"), 1, "{audit}");
    assert_eq!(count("snapshot.delete", "ok"), 1, "{audit}");
}
