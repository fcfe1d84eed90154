#!/usr/bin/env python3
"""Controller scale: 1,000 and 10,000 simulated agent sessions on one controller.

For each N: a fresh controller (release build); the load generator
(`agent/examples/load.rs`) enrolls N agents over the real Enrollment API (a key and CSR
each), opens N sessions (one TLS connection each) and heartbeats on the agents' real
interval; the controller acknowledges every heartbeat. Measured over `--measure-s`:
heartbeat round trip p50/p99, controller CPU and RSS, and the controller's disk writes per
second (heartbeats are gathered in memory and written in one transaction every 5 s). Then,
for the first round, 1,000 agents back up a tiny directory each at once through the real
pipeline: commits per second and p99 latency from job receipt to committed.

    cargo build --release --workspace --bins --examples
    python3 bench/controller_scale.py [--agents 1000 10000] [--measure-s 60] [--commits 1000] [--sources 3] [--plan]
        [--restores 1000 --restore-mb 16] [--controller-arg=--restore-memory=256MiB ...]

With --sources K each committing agent backs up K tiny directories (K commits per job); with
--plan a recovery of every committed device is then planned three times and timed. With
--restores N the first agent's backup holds --restore-mb MiB more, and that snapshot is then
restored onto N agents at once (the load generator fetches and verifies every chunk through
GetChunks and discards it): the controller's idle and peak RSS, its CPU, the aggregate rate.

Writes the "## Controller scale" section of BENCHMARKS.md unless --out is given.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402
from run import BIN, REPO, replace_section, start_controller  # noqa: E402

SECTION = "## Controller scale"


def one_round(n, work, bin_dir, measure_s, commits, heartbeat_ms, sources=1, plan=False, restores=0, restore_mb=16,
              controller_args=(), run_plan=False, restart=False, backup_mib=0, store="local", after=None,
              rotate=False):
    """One fleet of `n` simulated agents on a fresh controller; the load generator's
    report. `store`: "local", or "s3" (SeaweedFS on loopback). `after(env, d)`, if given,
    runs once the load generator is done, with the controller still up (the CLI's
    environment and the round's directory); its result is the report's "after"."""
    d = work / f"n{n}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    s3 = run.SeaweedFS(d) if store == "s3" else None
    extra = [*controller_args, *(s3.serve_args() if s3 else [])]
    ctl, url, fp = start_controller(bin_dir, d, extra=extra, env=s3.env if s3 else None)
    try:
        env = {**os.environ, "LIFEBOAT_IDENTITY": str(d / "ctl" / "admin.identity"), "LIFEBOAT_CONTROLLER": url}
        tokens = []
        for _ in range((n + 999) // 1000):
            out = subprocess.run([bin_dir / "lifeboat", "token", "create", "--uses", "1000", "--ttl", "2h", "--json"],
                                 env=env, capture_output=True, text=True, check=True)
            tokens.append(json.loads(out.stdout)["token"])
        load = bin_dir / "examples" / "load"
        proc = subprocess.Popen([load, "--controller", url, "--tokens", ",".join(tokens), "--ca-fingerprint", fp,
                                 "--identity", d / "ctl" / "admin.identity", "--agents", str(n), "--dir", d / "sim",
                                 "--heartbeat-ms", str(heartbeat_ms), "--measure-s", str(measure_s), "--commits", str(commits),
                                 "--sources", str(sources), *(["--plan"] if plan else []), *(["--run-plan"] if plan and run_plan else []),
                                 *(["--restores", str(restores), "--restore-mb", str(restore_mb)] if restores else []),
                                 *(["--backup-mib", str(backup_mib)] if backup_mib else []),
                                 *(["--restart"] if restart else []), *(["--rotate"] if rotate else [])],
                                env={**env, "LIFEBOAT_CONTROLLER_PID": str(ctl.pid)}, stdout=subprocess.PIPE,
                                stderr=open(d / "load.log", "w"), text=True)
        request, restarted = d / "sim" / "restart-request", d / "sim" / "restarted"
        while proc.poll() is None:
            if restart and request.exists() and not restarted.exists():
                # A graceful restart, as an upgrade does it: SIGTERM, then the same data
                # directory on the same address.
                ctl.terminate()
                ctl.wait(timeout=120)
                ctl, _, _ = start_controller(bin_dir, d, extra=extra, env=s3.env if s3 else None,
                                             listen=url.split("//")[-1])
                restarted.with_suffix(".tmp").write_text(str(ctl.pid))
                restarted.with_suffix(".tmp").rename(restarted)
            time.sleep(0.02)
        out = proc.stdout.read()
        if proc.returncode != 0:
            sys.exit(f"load generator failed (exit status {proc.returncode}): {(d / 'load.log').read_text()[-3000:]}")
        report = json.loads(out.strip().splitlines()[-1])
        if after:
            report["after"] = after(env, d)
        return report
    finally:
        ctl.kill()
        ctl.wait()
        if s3:
            s3.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--measure-s", type=int, default=60)
    ap.add_argument("--heartbeat-ms", type=int, default=15000, help="the agents' interval (lifeboat-agent: 15 s)")
    ap.add_argument("--commits", type=int, default=1000, help="agents committing at once (first round only)")
    ap.add_argument("--sources", type=int, default=1, help="sources each committing agent backs up")
    ap.add_argument("--plan", action="store_true", help="then plan a recovery of every committed device (3 times, timed)")
    ap.add_argument("--run-plan", action="store_true", help="with --plan: then run the plan, timing GetPlan every 500 ms as `recover watch` does")
    ap.add_argument("--restores", type=int, default=0, help="then restore one snapshot onto this many agents at once (first round)")
    ap.add_argument("--restore-mb", type=int, default=16, help="the restored snapshot's extra data, MiB")
    ap.add_argument("--controller-arg", action="append", default=[], help="an argument for lifeboat-controller serve (repeatable)")
    ap.add_argument("--restart", action="store_true",
                    help="instead of commits and restores: restart the controller (SIGTERM, same address) once the fleet is "
                         "connected and follow every session back (writes the \"Controller restart\" section)")
    ap.add_argument("--rotate", action="store_true",
                    help="instead of commits and restores: rotate the fleet's CA once the fleet is connected, wait until "
                         "every agent moved, finish (writes the \"CA rotation at fleet size\" section)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lifeboat-scale"))
    ap.add_argument("--bin", type=Path, default=BIN)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    if args.restart:
        return restart_rounds(args)
    if args.rotate:
        return rotate_rounds(args)
    rows = []
    for i, n in enumerate(args.agents):
        print(f"{n} agents ...", flush=True)
        first = i == 0
        r = one_round(n, args.work, args.bin, args.measure_s, args.commits if first else 0, args.heartbeat_ms,
                      args.sources, args.plan and first, args.restores if first else 0, args.restore_mb,
                      args.controller_arg, args.run_plan)
        print(json.dumps(r), flush=True)
        rows.append(r)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [
        SECTION,
        "",
        f"Command: `python3 bench/controller_scale.py --agents {' '.join(map(str, args.agents))} --measure-s {args.measure_s}"
        f" --commits {args.commits}{f' --sources {args.sources}' if args.sources != 1 else ''}{' --plan' if args.plan else ''}{' --run-plan' if args.run_plan else ''}"
        f"{f' --restores {args.restores} --restore-mb {args.restore_mb}' if args.restores else ''}"
        f"{''.join(f' --controller-arg={a}' for a in args.controller_arg)}` (after `cargo build --release --workspace --bins --examples`).",
        f"Machine: {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM; the load generator (one process, `agent/examples/load.rs`)",
        "runs on the same machine as the controller. Each simulated agent enrolled with its own key and CSR and keeps",
        f"its own TLS connection and session, heartbeating every {args.heartbeat_ms / 1000:g} s (lifeboat-agent: every 15 s),",
        "spread over the interval; the controller acknowledges each heartbeat, and the round trip is the latency.",
        "Heartbeats are kept in memory and written to the catalog in one transaction every 5 s.",
        "",
        "| sessions | enroll | connect | heartbeats/s | heartbeat p50 / p99 / max | controller CPU | controller RSS | controller disk writes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['agents']} | {r['enroll_s']:.0f} s | {r['connect_s']:.1f} s | {r['heartbeats_per_sec']:.0f} | "
            f"{r['heartbeat_ms_p50']} / {r['heartbeat_ms_p99']} / {r['heartbeat_ms_max']} ms | {r['controller_cpu_percent']:.1f}% of a core | "
            f"{r['controller_rss_peak'] / 2**20:.0f} MiB | {r['controller_disk_write_bytes_per_sec'] / 1e3:.0f} kB/s |")
    c = rows[0].get("commits")
    if c:
        lines += [
            "",
            f"{c['agents']} of those agents then back up {c.get('sources_each', 1)} tiny director{'y' if c.get('sources_each', 1) == 1 else 'ies'} each (one new file in each) at once, through the real pipeline",
            "(scan, MissingChunks, PutChunks, signed CommitSnapshot, countersigned and listed by the controller):",
            "",
            "| agents | committed | wall | commits/s | latency p50 / p99 (job received → committed) | controller CPU |",
            "|---|---|---|---|---|---|",
            f"| {c['agents']} | {c['committed']} | {c['wall_s']:.1f} s | {c['commits_per_sec']:.0f} | {c['latency_ms_p50']} / {c['latency_ms_p99']} ms | {c['controller_cpu_s']:.1f} s |",
        ]
        p = c.get("plan")
        if p:
            lines += [
                "",
                f"Then a recovery of those {p['devices']} devices ({p['sources']} sources) is planned three times (`PlanRecovery`,",
                "as an operator, timed by the caller): " + ", ".join(f"{ms} ms" for ms in p["ms"]) + ".",
            ]
            run = p.get("run")
            if run:
                lines += [
                    "",
                    f"The last plan is then run (`RunPlan`: every device's sources restored onto it) while `GetPlan` is called every",
                    f"500 ms, as `lifeboat recover watch` does: the plan ended {run['state']} in {run['wall_s']:.1f} s, {run['devices_done']}",
                    f"devices back and {run['devices_failed']} failed; {run['get_plan_calls']} `GetPlan` calls took "
                    f"{run['get_plan_ms_p50']} / {run['get_plan_ms_p99']} / {run['get_plan_ms_max']} ms (p50 / p99 / max); "
                    f"controller CPU {run['controller_cpu_s']:.1f} s.",
                ]
    r = rows[0].get("restores")
    if r:
        lines += [
            "",
            f"Then one snapshot ({r['snapshot_bytes'] / 2**20:.0f} MiB) is restored onto {r['restores']} of those agents at once, through GetChunks",
            "(each simulated agent fetches the tree and every chunk over two streams, as a real restore does, checks each chunk",
            "against its id and discards it; the controller's RSS is sampled every 100 ms):",
            "",
            "| restores at once | verified | wall | aggregate | latency p50 / p99 | controller CPU | controller RSS idle → peak | growth per restore |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['restores']} | {r['verified']} | {r['wall_s']:.1f} s | {r['aggregate_mb_per_s']:.0f} MB/s | "
            f"{r['latency_ms_p50'] / 1000:.1f} / {r['latency_ms_p99'] / 1000:.1f} s | {r['controller_cpu_s']:.1f} s | "
            f"{r['controller_rss_idle'] / 2**20:.0f} → {r['controller_rss_peak'] / 2**20:.0f} MiB | {r['controller_rss_growth_per_restore'] / 2**10:.0f} KiB |",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, SECTION, text)


ROTATE_SECTION = "## CA rotation at fleet size"


def rotate_rounds(args):
    rows = []
    for n in args.agents:
        print(f"{n} agents, CA rotation ...", flush=True)
        r = one_round(n, args.work, args.bin, args.measure_s, 0, args.heartbeat_ms, controller_args=args.controller_arg,
                      rotate=True)
        print(json.dumps(r["rotation"]), flush=True)
        rows.append(r)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [
        ROTATE_SECTION,
        "",
        f"Command: `python3 bench/controller_scale.py --rotate --agents {' '.join(map(str, args.agents))} --measure-s {args.measure_s}"
        f"{''.join(f' --controller-arg={a}' for a in args.controller_arg)}` (after `cargo build --release --workspace --bins --examples`).",
        f"Machine: {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, the load generator on the same machine. The simulated agents",
        f"(as in \"Controller scale\", heartbeating every {args.heartbeat_ms / 1000:g} s) are connected; then the admin starts a CA",
        "rotation (`RotateCa`). Each agent, told over its session, trusts both CAs, renews with a new key under the new CA",
        "(`RenewCertificate`), and reconnects with it, as `lifeboat-agent` does; `CaStatus` is polled every 500 ms until every",
        "agent has moved (renewed and its previous certificate retired by use of the new one); the admin renews its own",
        "identity and finishes (`RotateCa` finish: the old key deleted, the new CA presented).",
        "",
        "| agents | start | all moved | controller CPU until all moved | finish |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["rotation"]
        lines.append(f"| {r['agents']} | {r['start_ms']} ms | {r['all_moved_s']:.1f} s | {r['controller_cpu_s']:.1f} CPU-s | "
                     f"{r['finish_ms']} ms |")
    last = rows[-1]["rotation"]
    lines += ["", f"Agents moved over time, {last['agents']} agents (s, moved): "
              + ", ".join(f"{t:.0f}/{m}" for t, m in last["moved_over_time"]) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, ROTATE_SECTION, text)


RESTART_SECTION = "## Controller restart under load"


def restart_rounds(args):
    rows = []
    for n in args.agents:
        print(f"{n} agents, restart ...", flush=True)
        r = one_round(n, args.work, args.bin, args.measure_s, 0, args.heartbeat_ms, controller_args=args.controller_arg,
                      restart=True)
        print(json.dumps(r), flush=True)
        rows.append(r)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [
        RESTART_SECTION,
        "",
        f"Command: `python3 bench/controller_scale.py --restart --agents {' '.join(map(str, args.agents))} --measure-s {args.measure_s}"
        f"{''.join(f' --controller-arg={a}' for a in args.controller_arg)}` (after `cargo build --release --workspace --bins --examples`).",
        f"Machine: {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, the load generator on the same machine. The simulated agents",
        f"(as in \"Controller scale\", heartbeating every {args.heartbeat_ms / 1000:g} s) are connected and measured for {args.measure_s} s; then the controller is",
        "stopped (SIGTERM) and started again on the same data directory and address, as an upgrade does. Each agent reconnects",
        "as `lifeboat-agent` does (`lifeboat_agent::reconnect_backoff`: 200 ms doubling to 30 s, each pause ±50%). Measured:",
        "from the stop to the new controller listening, from then until every session is back, each agent's time from its",
        "session's break to its return, and the new controller's CPU in each second of the storm against the steady state's",
        "(before the restart) and the settled state's (20 s after the last return).",
        "",
        "| sessions | stop → listening | listening → all back | reconnect p50 / p99 / max | storm CPU | storm peak (1 s) | steady | settled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["restart"]
        lines.append(
            f"| {r['agents']} | {r['controller_back_s']:.1f} s | {r['all_back_s']:.0f} s | "
            f"{r['reconnect_ms_p50'] / 1000:.1f} / {r['reconnect_ms_p99'] / 1000:.1f} / {r['reconnect_ms_max'] / 1000:.1f} s | "
            f"{r['storm_cpu_s']:.1f} CPU-s | {r['storm_cpu_peak_percent']:.0f}% of a core | {r['steady_cpu_percent']:.1f}% | "
            f"{r['settled_cpu_percent']:.1f}% |")
    last = rows[-1]["restart"]
    lines += ["", f"Sessions back per second after the restart, {last['agents']} agents (CPU % of a core, sessions): "
              + ", ".join(f"{c:.0f}%/{s}" for c, s in last["per_second"]) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, RESTART_SECTION, text)


if __name__ == "__main__":
    main()
