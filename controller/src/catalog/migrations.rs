//! Numbered, forward-only schema migrations, embedded in the binary. The catalog's
//! `PRAGMA user_version` is the number of migrations applied. Never edit a shipped
//! migration: add the next one.

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    r#"
    CREATE TABLE agents (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        labels        TEXT NOT NULL DEFAULT '{}',
        hostname      TEXT NOT NULL DEFAULT '',
        signing_key   BLOB NOT NULL,
        cert_serial   TEXT NOT NULL DEFAULT '',
        enrolled_ms   INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL DEFAULT 0,
        sources       TEXT NOT NULL DEFAULT '[]',
        restore_roots TEXT NOT NULL DEFAULT '[]',
        version       TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE operators (
        name        TEXT PRIMARY KEY,
        role        TEXT NOT NULL,
        cert_serial TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        hash       TEXT PRIMARY KEY,
        labels     TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms    INTEGER,
        used_by    TEXT
    );
    CREATE TABLE packs (
        name       TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        chunks     INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE chunks (
        id     BLOB PRIMARY KEY,
        pack   TEXT NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE snapshots (
        id            TEXT PRIMARY KEY,
        agent_id      TEXT NOT NULL,
        agent_name    TEXT NOT NULL,
        source        TEXT NOT NULL,
        source_path   TEXT NOT NULL,
        hostname      TEXT NOT NULL,
        received_ms   INTEGER NOT NULL,
        agent_time_ms INTEGER NOT NULL,
        files         INTEGER NOT NULL,
        dirs          INTEGER NOT NULL,
        bytes         INTEGER NOT NULL,
        bytes_new     INTEGER NOT NULL,
        parent        TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX snapshots_by_source ON snapshots(agent_id, source, received_ms);
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        agent_id     TEXT NOT NULL,
        state        INTEGER NOT NULL,
        detail       TEXT NOT NULL,
        job          BLOB NOT NULL,
        created_ms   INTEGER NOT NULL,
        started_ms   INTEGER NOT NULL DEFAULT 0,
        finished_ms  INTEGER NOT NULL DEFAULT 0,
        progress     BLOB,
        error        TEXT NOT NULL DEFAULT '',
        snapshot_ids TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX jobs_by_agent_state ON jobs(agent_id, state);
    "#,
    // 2: how much each backup read from disk (unchanged files are not re-read).
    r#"
    ALTER TABLE snapshots ADD COLUMN bytes_read INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: trust: revocation, short-lived agent certificates renewed over the session (the
    // previous serial stays valid until the agent first uses the new one), operator
    // expiry, and the hash-chained audit log.
    r#"
    ALTER TABLE agents ADD COLUMN revoked_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN prev_serial TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN cert_expires_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE operators ADD COLUMN revoked_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE operators ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE operators ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
    CREATE TABLE audit (
        seq     INTEGER PRIMARY KEY,
        ts_ms   INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        target  TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail  TEXT NOT NULL,
        prev    BLOB NOT NULL,
        hash    BLOB NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(ts_ms);
    "#,
    // 4: each agent's Docker inventory (protobuf DockerInventory, as last reported), and
    // join tokens good for a fixed number of enrollments (a compose file's agents share one).
    r#"
    ALTER TABLE agents ADD COLUMN docker BLOB;
    ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: policies, the scheduler's last slot per (policy, agent), which policy made a job
    // and how often it was retried, pinned snapshots.
    r#"
    CREATE TABLE policies (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE schedule (
        policy       TEXT NOT NULL,
        agent_id     TEXT NOT NULL,
        last_slot_ms INTEGER NOT NULL,
        PRIMARY KEY (policy, agent_id)
    );
    ALTER TABLE jobs ADD COLUMN policy TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_policy_state ON jobs(policy, state);
    ALTER TABLE snapshots ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: scrub: when each pack was last read back whole, and the chunks found bad (dropped
    // from the index until a backup stores them again).
    r#"
    ALTER TABLE packs ADD COLUMN verified_ms INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE bad_chunks (
        id        BLOB PRIMARY KEY,
        pack      TEXT NOT NULL,
        reason    TEXT NOT NULL,
        found_ms  INTEGER NOT NULL,
        healed_ms INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    "#,
    // 7: mass recovery: quarantined snapshots, each restore's result (phases, repair
    // report), the measured restore samples the downtime model learns from, drills, and
    // recovery plans (the plan as protobuf `PlanInfo`, rewritten as it runs).
    r#"
    ALTER TABLE snapshots ADD COLUMN quarantined_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN result BLOB;
    CREATE TABLE restore_samples (
        job_id   TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        kind     TEXT NOT NULL,
        bytes    INTEGER NOT NULL,
        files    INTEGER NOT NULL,
        data_ms  INTEGER NOT NULL,
        total_ms INTEGER NOT NULL,
        shared   INTEGER NOT NULL,
        at_ms    INTEGER NOT NULL
    );
    CREATE INDEX samples_by_agent ON restore_samples(agent_id, kind, at_ms);
    CREATE TABLE drills (
        id             TEXT PRIMARY KEY,
        agent_id       TEXT NOT NULL,
        source         TEXT NOT NULL,
        snapshot_id    TEXT NOT NULL,
        job_id         TEXT NOT NULL DEFAULT '',
        state          TEXT NOT NULL,
        started_ms     INTEGER NOT NULL,
        finished_ms    INTEGER NOT NULL DEFAULT 0,
        estimate_ms    INTEGER NOT NULL,
        estimate_basis TEXT NOT NULL,
        actual_ms      INTEGER NOT NULL DEFAULT 0,
        bytes          INTEGER NOT NULL,
        result         BLOB,
        error          TEXT NOT NULL DEFAULT '',
        probe          TEXT NOT NULL DEFAULT '',
        policy         TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX drills_by_agent ON drills(agent_id, started_ms);
    CREATE INDEX drills_by_job ON drills(job_id);
    CREATE TABLE plans (
        id         TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        state      TEXT NOT NULL,
        info       BLOB NOT NULL
    );
    "#,
    // 8: why the controller refused a failed job (`pb::Refusal`), which the scheduler acts
    // on instead of the error's text.
    r#"
    ALTER TABLE jobs ADD COLUMN refusal INTEGER NOT NULL DEFAULT 0;
    "#,
    // 9: a snapshot's lock (until when nobody may delete it), fixed when it is committed.
    // -1: committed before locks were stored; the controller fixes it at start from the
    // policies in force then (`retention::fix_unset_locks`).
    r#"
    ALTER TABLE snapshots ADD COLUMN locked_until_ms INTEGER NOT NULL DEFAULT -1;
    "#,
    // 10: Object Lock. The version of each pack and envelope the store wrote (reads and
    // deletes name it) and until when the store retains each pack.
    r#"
    ALTER TABLE packs ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE packs ADD COLUMN retained_until_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE snapshots ADD COLUMN envelope_version TEXT NOT NULL DEFAULT '';
    "#,
    // 11: a token an admin issued to re-enroll one existing device (a rebuilt machine)
    // under its name, keeping its history ('' for a token that enrolls new machines).
    r#"
    ALTER TABLE tokens ADD COLUMN device TEXT NOT NULL DEFAULT '';
    "#,
    // 12: off-site copies. The packs each copy store holds (copied whole, under the same
    // name), the chunks in them as copied, and the snapshots whose copy is complete.
    r#"
    CREATE TABLE copy_packs (
        store             TEXT NOT NULL,
        pack              TEXT NOT NULL,
        version           TEXT NOT NULL DEFAULT '',
        retained_until_ms INTEGER NOT NULL DEFAULT 0,
        copied_ms         INTEGER NOT NULL,
        PRIMARY KEY (store, pack)
    );
    CREATE TABLE copy_chunks (
        store  TEXT NOT NULL,
        id     BLOB NOT NULL,
        pack   TEXT NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (store, id)
    ) WITHOUT ROWID;
    CREATE TABLE copies (
        store           TEXT NOT NULL,
        snapshot        TEXT NOT NULL,
        version         TEXT NOT NULL DEFAULT '',
        locked_until_ms INTEGER NOT NULL DEFAULT 0,
        copied_ms       INTEGER NOT NULL,
        PRIMARY KEY (store, snapshot)
    );
    "#,
    // 13: four eyes: requests for destructive actions a second admin approves.
    r#"
    CREATE TABLE approvals (
        id         TEXT PRIMARY KEY,
        action     TEXT NOT NULL,
        target     TEXT NOT NULL,
        requester  TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        state      TEXT NOT NULL,
        decided_by TEXT NOT NULL DEFAULT '',
        decided_ms INTEGER NOT NULL DEFAULT 0
    );
    "#,
    // 14: no dedup oracle: the chunks each agent proved it holds (uploaded them, or its
    // own snapshots reference them). `MissingChunks` answers an agent about these only.
    r#"
    CREATE TABLE agent_chunks (
        agent_id TEXT NOT NULL,
        id       BLOB NOT NULL,
        PRIMARY KEY (agent_id, id)
    ) WITHOUT ROWID;
    "#,
    // 15: inventories: the packages found in snapshots, stored once per distinct set of
    // package databases (`key`), and which inventory each snapshot has.
    r#"
    CREATE TABLE inventories (
        key        TEXT PRIMARY KEY,
        scanned_ms INTEGER NOT NULL,
        body       BLOB NOT NULL
    );
    CREATE TABLE snapshot_inventories (
        snapshot_id TEXT PRIMARY KEY,
        key         TEXT NOT NULL,
        scanned_ms  INTEGER NOT NULL,
        error       TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX snapshot_inventories_by_key ON snapshot_inventories(key);
    "#,
    // 16: the vulnerability feed (OSV advisories, indexed by the packages they name), its
    // generation, and each inventory's findings and the generation they were matched at.
    r#"
    CREATE TABLE advisories (
        id          TEXT PRIMARY KEY,
        modified    TEXT NOT NULL,
        summary     TEXT NOT NULL,
        aliases     TEXT NOT NULL,
        severity    TEXT NOT NULL,
        score       REAL NOT NULL,
        imported_ms INTEGER NOT NULL,
        body        BLOB NOT NULL
    );
    CREATE TABLE advisory_packages (
        ecosystem TEXT NOT NULL,
        name      TEXT NOT NULL,
        id        TEXT NOT NULL,
        PRIMARY KEY (ecosystem, name, id)
    ) WITHOUT ROWID;
    CREATE TABLE feed (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL
    );
    INSERT INTO feed(id, generation) VALUES (1, 0);
    ALTER TABLE inventories ADD COLUMN feed_generation INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE findings (
        key       TEXT NOT NULL,
        advisory  TEXT NOT NULL,
        ecosystem TEXT NOT NULL,
        name      TEXT NOT NULL,
        version   TEXT NOT NULL,
        fixed     TEXT NOT NULL,
        PRIMARY KEY (key, advisory, ecosystem, name, version)
    ) WITHOUT ROWID;
    "#,
    // 17: ransomware signals: each snapshot's score against the one before it, the
    // threshold it was judged by, and the report.
    r#"
    CREATE TABLE anomalies (
        snapshot_id TEXT PRIMARY KEY,
        parent      TEXT NOT NULL,
        score       INTEGER NOT NULL,
        threshold   INTEGER NOT NULL,
        suspect     INTEGER NOT NULL,
        analyzed_ms INTEGER NOT NULL,
        report      TEXT NOT NULL
    );
    "#,
    // 18: trusted images: vendor keys (ssh-ed25519) and the image digests their signed
    // lists vouch for.
    r#"
    CREATE TABLE vendor_keys (
        name        TEXT PRIMARY KEY,
        key         TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        added_ms    INTEGER NOT NULL
    );
    CREATE TABLE trusted_digests (
        digest      TEXT NOT NULL,
        vendor      TEXT NOT NULL,
        imported_ms INTEGER NOT NULL,
        PRIMARY KEY (digest, vendor)
    ) WITHOUT ROWID;
    "#,
    // 19: the device's recovery time objective each drill was checked against (0: none).
    r#"
    ALTER TABLE drills ADD COLUMN rto_ms INTEGER NOT NULL DEFAULT 0;
    "#,
    // 20: the fingerprint of the CA that issued each agent's and operator's current
    // certificate ('' before this column), so a CA rotation knows who has moved.
    r#"
    ALTER TABLE agents ADD COLUMN cert_ca TEXT NOT NULL DEFAULT '';
    ALTER TABLE operators ADD COLUMN cert_ca TEXT NOT NULL DEFAULT '';
    "#,
    // 21: a device's snapshots in time order, whatever their source: every commit asks
    // whether the device's newest earlier snapshot is quarantined (`insert_snapshots`);
    // by `snapshots_by_source` that read every snapshot of the device (3 ms at 10,000).
    r#"
    CREATE INDEX snapshots_by_device ON snapshots(agent_id, received_ms);
    "#,
];
