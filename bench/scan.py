#!/usr/bin/env python3
"""What scanning restore points costs: the controller's CPU to read a snapshot's packages
and judge its ransomware signals, per snapshot and per GB, and the backup's time with
scanning on and off (`lifeboat-controller serve --no-scan`).

The source is the benchmark data (`../shared/bench/gen_dataset.py`, day1 then day2) with
this machine's own package databases laid in (dpkg's status, the Python packages'
METADATA, npm's node_modules, this repository's Cargo.lock), so the inventory has real
work. Each run starts a fresh controller and agent (release build), backs up day1, turns
the source into day2 (rsync) and backs it up again. With scanning on, it waits after each
backup until the snapshot's packages are read and its signals judged, and counts the
controller's CPU in that time (less what it spends idle).

    python3 bench/scan.py [--scale 1.0] [--runs 3] [--out FILE] [--bin target/release]
"""

import argparse
import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (bench/run.py: the generator, controller start, /proc readers)


def package_databases(dst: pathlib.Path) -> dict:
    """Copies this machine's package databases under `dst`; returns what it laid in."""
    laid = {"dpkg": 0, "python": 0, "npm": 0, "cargo": 0}
    if os.path.exists("/var/lib/dpkg/status"):
        (dst / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
        shutil.copy2("/var/lib/dpkg/status", dst / "var/lib/dpkg/status")
        laid["dpkg"] = open("/var/lib/dpkg/status").read().count("\nPackage: ") + 1
    for meta in glob.glob("/usr/lib/python3/dist-packages/*.dist-info/METADATA") + glob.glob(
        f"{sys.prefix}/lib/python3*/site-packages/*.dist-info/METADATA"
    ):
        rel = pathlib.Path("opt/python") / pathlib.Path(meta).parent.name / "METADATA"
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(meta, dst / rel)
        laid["python"] += 1
    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True).stdout.strip() if shutil.which("npm") else ""
    for pkg in glob.glob(f"{root}/npm/node_modules/*/package.json") if root else []:
        rel = pathlib.Path("srv/app/node_modules") / pathlib.Path(pkg).parent.name / "package.json"
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pkg, dst / rel)
        laid["npm"] += 1
    lock = HERE.parent / "Cargo.lock"
    (dst / "src/lifeboat").mkdir(parents=True, exist_ok=True)
    shutil.copy2(lock, dst / "src/lifeboat/Cargo.lock")
    laid["cargo"] = lock.read_text().count("[[package]]")
    return laid


class Fleet:
    def __init__(self, bin_dir: pathlib.Path, work: pathlib.Path, scan: bool, src: pathlib.Path):
        self.bin, self.work = bin_dir, work
        bench.clean(work)
        work.mkdir(parents=True)
        extra = () if scan else ("--no-scan",)
        self.controller, self.url, fingerprint = bench.start_controller(bin_dir, work, extra=extra)
        self.env = {**os.environ, "LIFEBOAT_IDENTITY": str(work / "ctl" / "admin.identity"), "LIFEBOAT_CONTROLLER": self.url}
        token = self.json("token", "create")["token"]
        bench.sh(bin_dir / "lifeboat-agent", "enroll", "--controller", self.url, "--token", token,
                 "--ca-fingerprint", fingerprint, "--name", "bench", "--state-dir", work / "agent", capture_output=True)
        self.agent = subprocess.Popen([bin_dir / "lifeboat-agent", "run", "--state-dir", work / "agent", "--source", f"data={src}"],
                                      stdout=subprocess.DEVNULL, stderr=open(work / "agent.log", "w"))
        deadline = time.monotonic() + 30
        while not any(a["connected"] for a in self.json("agents")):
            if time.monotonic() > deadline:
                sys.exit("agent did not connect")
            time.sleep(0.05)

    def cli(self, *args):
        out = subprocess.run([self.bin / "lifeboat", *map(str, args)], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"lifeboat {args} failed: {out.stderr}")
        return out.stdout

    def json(self, *args):
        return json.loads(self.cli(*args, "--json"))

    def backup(self):
        t = time.monotonic()
        job = self.json("backup", "bench", "--wait")
        if job["state"] != "succeeded":
            sys.exit(f"backup failed: {job}")
        return time.monotonic() - t, job["snapshot_ids"][0]

    def scanned(self, snapshot: str) -> bool:
        log = (self.work / "controller.log").read_text()
        read = any(("read the snapshot's packages" in l or "packages are those of an earlier" in l) and snapshot in l
                   for l in log.splitlines())
        judged = any(a["snapshot"] == snapshot for a in self.json("anomalies", "--all"))
        return read and judged

    def stop(self):
        for p in (self.agent, self.controller):
            p.terminate()
            p.wait()


def idle_rate(pid: int, seconds: float = 3.0) -> float:
    c0, t0 = bench.proc_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return (bench.proc_cpu(pid) - c0) / (time.monotonic() - t0)


def one_run(bin_dir, work, scan, days, src):
    bench.clean(src)
    subprocess.run(["rsync", "-a", "--delete", f"{days[0]}/", f"{src}/"], check=True)
    fleet = Fleet(bin_dir, work / ("on" if scan else "off"), scan, src)
    try:
        idle = idle_rate(fleet.controller.pid)
        out = []
        for i, day in enumerate(days):
            if i > 0:
                subprocess.run(["rsync", "-a", "--delete", f"{day}/", f"{src}/"], check=True)
            wall, snap = fleet.backup()
            row = {"day": i + 1, "backup_s": round(wall, 2), "snapshot": snap}
            snaps = {s["id"]: s for s in fleet.json("snapshots")}
            row["bytes"] = snaps[snap]["bytes"]
            row["files"] = snaps[snap]["files"]
            if scan:
                c0, t0 = bench.proc_cpu(fleet.controller.pid), time.monotonic()
                while not fleet.scanned(snap):
                    time.sleep(0.1)
                elapsed = time.monotonic() - t0
                row["scan_cpu_s"] = round(max(0.0, bench.proc_cpu(fleet.controller.pid) - c0 - idle * elapsed), 3)
                row["scan_wall_s"] = round(elapsed, 2)
                inv = fleet.json("sbom", snap)
                row["packages"] = len(inv["packages"])
                a = next(x for x in fleet.json("anomalies", "--all") if x["snapshot"] == snap)
                row["anomaly_score"] = a["score"]
            out.append(row)
        return out
    finally:
        fleet.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bin", default=str(HERE.parent / "target" / "release"))
    ap.add_argument("--work", default="/var/tmp/lb-scan")
    ap.add_argument("--out")
    a = ap.parse_args()
    bin_dir, work = pathlib.Path(a.bin).resolve(), pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"data-{a.scale}-{a.seed}"
    if not (data / "day2").exists():
        bench.sh(sys.executable, bench.GEN, "--out", data, "--scale", a.scale, "--seed", a.seed, capture_output=True)
    days = []
    laid = {}
    for d in ("day1", "day2"):
        withdb = work / f"{d}-with-packages"
        bench.clean(withdb)
        subprocess.run(["cp", "-a", data / d, withdb], check=True)
        laid = package_databases(withdb)
        days.append(withdb)
    src = work / "src"
    results = {"scale": a.scale, "seed": a.seed, "package_databases": laid, "runs": []}
    for r in range(a.runs):
        for scan in (True, False):
            rows = one_run(bin_dir, work, scan, days, src)
            results["runs"].append({"run": r + 1, "scan": scan, "days": rows})
            print(json.dumps(results["runs"][-1]), flush=True)
    text = json.dumps(results, indent=2)
    if a.out:
        pathlib.Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
