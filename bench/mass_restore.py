#!/usr/bin/env python3
"""Mass restore: N agents restoring at once from one controller.

For each N: a fresh controller (release build); N agent processes on this machine, each
with its own copy of the shared dataset at a small scale (`../shared/bench/gen_dataset.py`,
seed 42) as its host path; one backup each; one drill run of every device (one drill
each, one device at a time, begun by a calibration burst of up to 32 devices at once:
together they calibrate the downtime model); then one recovery plan restoring every device in
place at once (`--concurrency N`), run to the end. Reported: aggregate restore throughput
(bytes written by all devices / the plan's wall time), controller CPU seconds and peak RSS
during the plan, and the downtime model's error per device and in total.

    python3 bench/mass_restore.py --agents 10 50 200 [--scale 0.005] [--bandwidth 200MiB/s]

Writes the "## Mass restore" section of BENCHMARKS.md unless --out is given. `--smoke` runs
one small round and only checks that the output parses (CI).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, GEN, MASS_SECTION, REPO, SeaweedFS, proc_cpu, replace_section, start_controller  # noqa: E402

S3_SECTION = "## Mass restore from S3"


def proc_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Samples a process's resident memory every 50 ms while in use; `peak` is the highest."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, proc_rss(pid), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, proc_rss(self.pid))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


# Seconds the idle fleet is watched before each plan.
IDLE_WINDOW_S = 5


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, **kw)


class Fleet:
    def __init__(self, work: Path, bin_dir: Path, store="local"):
        self.work = work
        self.bin = bin_dir
        self.agents = []
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        # With an S3 store (SeaweedFS on this machine) the agents read the bucket directly.
        self.s3 = SeaweedFS(work) if store == "s3" else None
        extra, env = (self.s3.serve_args(), self.s3.env) if self.s3 else ((), None)
        self.controller, self.url, self.fingerprint = start_controller(self.bin, work, extra=extra, env=env)

    def cli(self, *args, check=True):
        env = {**os.environ, "LIFEBOAT_IDENTITY": str(self.work / "ctl" / "admin.identity"), "LIFEBOAT_CONTROLLER": self.url}
        out = subprocess.run([self.bin / "lifeboat", *map(str, args)], env=env, capture_output=True, text=True)
        if check and out.returncode != 0:
            sys.exit(f"lifeboat {args} failed: {out.stderr}")
        return out

    def json(self, *args):
        return json.loads(self.cli(*args, "--json").stdout)

    def add_agents(self, n: int, data: Path):
        token = self.json("token", "create", "--uses", n, "--ttl", "2h", "--label", "bench=mass")["token"]
        for i in range(n):
            name = f"m{i:03d}"
            root = self.work / "machines" / name
            src = root / "data"
            root.mkdir(parents=True)
            sh("cp", "-a", data, src)
            state = self.work / "agents" / name
            sh(self.bin / "lifeboat-agent", "enroll", "--controller", self.url, "--token", token,
               "--ca-fingerprint", self.fingerprint, "--name", name, "--state-dir", state, capture_output=True)
            log = open(self.work / f"agent-{name}.log", "w")
            self.agents.append(subprocess.Popen(
                [self.bin / "lifeboat-agent", "run", "--state-dir", state, "--source", f"data={src}",
                 "--restore-root", root, "--no-docker"], stdout=subprocess.DEVNULL, stderr=log))
        self.wait(lambda: sum(a["connected"] for a in self.json("agents")) >= n, f"{n} agents to connect")

    def wait(self, cond, what, timeout=1800):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.5)

    def backup_all(self, n: int):
        for i in range(n):
            self.cli("backup", f"m{i:03d}", "--source", "data")
        self.wait(lambda: len(self.json("snapshots")) >= n, "every backup")

    def stop(self):
        for p in [*self.agents, self.controller]:
            p.kill()
            p.wait()
        if self.s3:
            self.s3.stop()


def run_plan(fleet: Fleet, n: int, bandwidth, perf_to: Path | None = None):
    """Plans and runs the restore of every device; returns its figures. With `perf_to`,
    the controller is profiled while the plan runs (`perf record -g`, written there)."""
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    args = ["recover", "plan", "--selector", "bench=mass", "--before", before, "--concurrency", n]
    if bandwidth:
        args += ["--bandwidth", bandwidth]
    plan = fleet.json(*args)
    pid = fleet.controller.pid
    # What the idle fleet costs the controller (sessions, heartbeats), to tell it apart
    # from what the restores cost.
    idle0, t_idle = proc_cpu(pid), time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    idle_cpu_per_s = (proc_cpu(pid) - idle0) / (time.monotonic() - t_idle)
    cpu0 = proc_cpu(pid)
    rss_before = proc_rss(pid)
    t0 = time.monotonic()
    perf = None
    if perf_to:
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "999", "--call-graph", "dwarf,32768", "-p", str(pid), "-o", str(perf_to)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf attaches before the plan starts
        cpu0, t0 = proc_cpu(pid), time.monotonic()
    with RssPeak(pid) as peak:
        out = fleet.cli("recover", "run", plan["id"], "--wait", "--json", check=False)
    wall = time.monotonic() - t0
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    done = json.loads(out.stdout)
    if done["state"] != "finished":
        sys.exit(f"plan did not finish: {out.stderr}")
    written = sum(s["bytes"] for d in done["devices"] for s in d["sources"])
    errors = []
    est_total = act_total = 0
    for d in done["devices"]:
        est, act = d["est_downtime_ms"], d["actual_downtime_ms"]
        errors.append(abs(act - est) / est)
        est_total += est
        act_total += act
    errors.sort()
    makespan = max(d["actual_downtime_ms"] for d in done["devices"]) / 1000
    return {
        "agents": n,
        "bytes": written,
        "makespan_s": makespan,
        "wall_s": wall,
        "throughput_mb_s": written / makespan / 1e6,
        "controller_cpu_s": proc_cpu(pid) - cpu0,
        "controller_idle_cpu_s": idle_cpu_per_s * wall,
        "controller_rss_before": rss_before,
        "controller_peak_rss": peak.peak,
        "est_makespan_s": done["estimate"]["makespan_ms"] / 1000,
        "error_median": statistics.median(errors),
        "error_p90": errors[int(0.9 * (len(errors) - 1))],
        "error_max": errors[-1],
        "error_total": (act_total - est_total) / est_total,
    }


def one_round(n: int, data: Path, work: Path, bin_dir: Path, bandwidth, store="local", perf: Path | None = None):
    """A fleet of n: backups, one drill per device, then two plans: the first estimated
    from the drills and their calibration burst, the second also from what the first plan
    moved."""
    fleet = Fleet(work / f"n{n}", bin_dir, store)
    try:
        fleet.add_agents(n, data)
        fleet.backup_all(n)
        drills = fleet.cli("drill", "run", "--selector", "bench=mass", "--json", check=False)
        if drills.returncode != 0:
            sys.exit(f"drills failed: {drills.stderr}")
        first = run_plan(fleet, n, bandwidth, perf and perf / f"controller-n{n}-first.data")
        second = run_plan(fleet, n, bandwidth, perf and perf / f"controller-n{n}-second.data")
        return {**first, "second": second}
    finally:
        fleet.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--scale", type=float, default=0.005)
    ap.add_argument("--bandwidth", default=None, help="plan egress cap, e.g. 200MiB/s (default: none)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lifeboat-mass"))
    ap.add_argument("--bin", type=Path, default=BIN)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--smoke", action="store_true", help="one round of 3 agents at scale 0.001; prints JSON, writes nothing")
    ap.add_argument("--store", choices=["local", "s3"], default="local",
                    help="the controller's store: its own directory, or SeaweedFS on this machine (restores read it directly)")
    ap.add_argument("--perf", type=Path, default=None, metavar="DIR",
                    help="profile the controller during each plan with `perf record -g` into DIR "
                         "(`perf report -i DIR/controller-nN-first.data`); the profiler costs CPU, so "
                         "figures from such a run are for finding where time goes, not for the tables")
    args = ap.parse_args()
    if args.perf:
        args.perf.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.agents, args.scale = [3], 0.001
    data_root = args.work / f"data-{args.scale}"
    if not (data_root / "day1").exists():
        sh(sys.executable, GEN, "--out", data_root, "--seed", 42, "--scale", args.scale, capture_output=True)
    rows = []
    for n in args.agents:
        print(f"{n} agents ...", flush=True)
        rows.append(one_round(n, data_root / "day1", args.work, args.bin, args.bandwidth, args.store, args.perf))
        print(json.dumps(rows[-1]), flush=True)
    if args.smoke:
        for r in rows:
            assert r["bytes"] > 0 and r["throughput_mb_s"] > 0, r
        print(json.dumps(rows))
        return
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_device = rows[0]["bytes"] / rows[0]["agents"] / 1e6
    cmd = f"python3 bench/mass_restore.py --agents {' '.join(map(str, args.agents))} --scale {args.scale}"
    if args.bandwidth:
        cmd += f" --bandwidth {args.bandwidth}"
    if args.store == "s3":
        cmd += " --store s3"
    lines = [
        S3_SECTION if args.store == "s3" else MASS_SECTION,
        "",
        f"Command: `{cmd}` (after `cargo build --release`). Machine: {os.cpu_count()} cores,",
        f"{mem / 2**30:.0f} GiB RAM. Each agent is its own process on this machine with its own copy of the",
        f"dataset (seed 42, scale {args.scale}: {per_device:.1f} MB per device) and one backup; one drill per",
        "device (one device at a time) and the calibration burst the drill run begins with (up to 32",
        "devices restored at once into sandboxes) calibrate the downtime model; then a plan restores",
        "every device in place at once, twice: the first plan is estimated from the drills and the burst,",
        "the second also from the aggregate rate the first moved and its devices' restores beside others",
        f"(`--concurrency N`{', --bandwidth ' + args.bandwidth if args.bandwidth else ', no egress cap'}). Throughput is the bytes all devices wrote over",
        "the plan's length; CPU and peak RSS (sampled every 50 ms) are the controller's during the",
        "plan, with its RSS just before the plan for comparison; CPU per GB is the plan's",
        f"CPU over the bytes restored, and in brackets what the idle fleet cost (measured over {IDLE_WINDOW_S} s",
        "before the plan and scaled to its length); the error is",
        "|actual − estimated| / estimated downtime per device.",
        "",
        "| agents | plan | bytes restored | plan length | aggregate MB/s | controller CPU s (idle) | CPU-s per GB | controller RSS before → peak | estimated length | error median / p90 / max | total error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label, p in (("first (drills and burst)", r), ("second (after one plan)", r["second"])):
            lines.append(
                f"| {r['agents']} | {label} | {p['bytes'] / 1e6:.0f} MB | {p['makespan_s']:.1f} s | {p['throughput_mb_s']:.0f} | "
                f"{p['controller_cpu_s']:.2f} ({p.get('controller_idle_cpu_s', 0):.2f}) | {p['controller_cpu_s'] / (p['bytes'] / 1e9):.2f} | {p['controller_rss_before'] / 2**20:.0f} → {p['controller_peak_rss'] / 2**20:.0f} MiB | {p['est_makespan_s']:.1f} s | "
                f"{100 * p['error_median']:.0f}% / {100 * p['error_p90']:.0f}% / {100 * p['error_max']:.0f}% | {100 * p['error_total']:+.0f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, S3_SECTION if args.store == "s3" else MASS_SECTION, text)


if __name__ == "__main__":
    main()
