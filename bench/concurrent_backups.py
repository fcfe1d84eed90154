#!/usr/bin/env python3
"""Concurrent backups (checklist row D3, scaled to this machine): N agents back up M MiB
each, all at once, half of every backup the same for all of them (50% deduplicated), into
a local-disk store and into an S3 store (SeaweedFS on loopback).

The agents are simulated by the load generator (`agent/examples/load.rs --commits N
--backup-mib M`): each has its own key, certificate and TLS session and runs the real
backup pipeline (scan, MissingChunks, PutChunks, signed CommitSnapshot). Measured: the
burst's wall time, ingest (bytes the backups read, and bytes new to the store, over that
wall time), commits, job-to-commit latency p50 / p99, the controller's CPU; then, with the
controller still up, `lifeboat verify` over the whole store (every chunk read back and
checked, every listed snapshot complete), and the controller's log searched for
"database is locked" (the checklist: none may reach a user).

    cargo build --release --workspace --bins --examples
    python3 bench/concurrent_backups.py --backups 500 --backup-mib 4

Writes the section "Concurrent backups" of BENCHMARKS.md.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import controller_scale  # noqa: E402
import run  # noqa: E402

SECTION = "## Concurrent backups"


def verify_and_search(bin_dir):
    def after(env, d):
        out = subprocess.run([bin_dir / "lifeboat", "verify", "--json"], env=env, capture_output=True, text=True)
        listed = json.loads(subprocess.run([bin_dir / "lifeboat", "snapshots", "--json"], env=env, capture_output=True,
                                           text=True, check=True).stdout)
        log = (d / "controller.log").read_text(errors="replace")
        return {"verify_rc": out.returncode, "verify": out.stdout.strip()[-2000:] or out.stderr.strip()[-2000:],
                "snapshots_listed": len(listed), "locked_in_log": log.count("database is locked"),
                "store_bytes": run.du(d / "seaweed") if (d / "seaweed").exists() else run.du(d / "ctl" / "store")}
    return after


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backups", type=int, default=500, help="agents backing up at once")
    ap.add_argument("--backup-mib", type=int, default=4, help="MiB each backup reads (half shared by all agents)")
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lifeboat-scale"))
    ap.add_argument("--bin", type=Path, default=run.BIN)
    ap.add_argument("--out", type=Path, default=run.REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    rows = []
    for store in args.stores.split(","):
        for i in range(args.runs):
            print(f"{store} store, run {i + 1}/{args.runs} ...", flush=True)
            r = controller_scale.one_round(args.backups, args.work, args.bin, 1, args.backups, 15000,
                                           backup_mib=args.backup_mib, store=store, after=verify_and_search(args.bin))
            c, a = r["commits"], r["after"]
            rows.append({"store": store, **{k: c[k] for k in ("committed", "wall_s", "latency_ms_p50", "latency_ms_p99",
                                                            "controller_cpu_s", "bytes_read", "bytes_new")},
                         "failures": r["failures"], "first_failures": r["first_failures"], **a})
            print(json.dumps(rows[-1]), flush=True)
    (args.work / "concurrent-backups.json").write_text(json.dumps(rows, indent=1))
    write_report(args, rows)


def write_report(args, rows):
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [
        SECTION,
        "",
        f"Checklist row D3 on this machine ({os.cpu_count()} cores, {mem / 2**30:.0f} GiB): {args.backups} agents back up"
        f" {args.backup_mib} MiB each at once (incompressible; half of it the same for every agent), simulated by the load"
        " generator on the same machine (each with its own certificate, TLS session and the real backup pipeline).",
        " Ingest is what the backups read over the burst's wall time, and what they uploaded (the chunks the"
        " controller said it lacked when asked); the store's size after the burst shows what it kept;"
        " latency is from the job reaching the agent to its snapshot committed. Then `lifeboat verify` over the whole"
        " store with the controller still up, and the controller's log searched for \"database is locked\".",
        "",
        f"- Command: `python3 bench/concurrent_backups.py --backups {args.backups} --backup-mib {args.backup_mib}"
        f" --runs {args.runs}` (after `cargo build --release --workspace --bins --examples`)",
        "",
        "| store | committed | failed | wall | ingest read / uploaded | store after | latency p50 / p99 | controller CPU | verify | snapshots listed | \"database is locked\" |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "clean (exit 0)" if r["verify_rc"] == 0 else f"exit {r['verify_rc']}"
        lines.append(
            f"| {r['store']} | {r['committed']} | {r['failures']} | {r['wall_s']:.1f} s"
            f" | {r['bytes_read'] / 1e6 / r['wall_s']:.0f} / {r['bytes_new'] / 1e6 / r['wall_s']:.0f} MB/s"
            f" | {r['store_bytes'] / 1e6:.0f} MB"
            f" | {r['latency_ms_p50'] / 1000:.2f} / {r['latency_ms_p99'] / 1000:.2f} s | {r['controller_cpu_s']:.1f} s"
            f" | {verdict} | {r['snapshots_listed']} | {r['locked_in_log']} |")
    run.replace_section(args.out, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
