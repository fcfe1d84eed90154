#!/usr/bin/env python3
"""Scrub and verify throughput (checklist row D8): Lifeboat's `lifeboat verify`, restic's
`check --read-data` and borg's `check --verify-data`, each reading its whole store, on the
same data in the same run.

For each tool and run: a fresh store holding day1 and day2 of the shared dataset (as
`bench/run.py` makes them, untimed); then, with the page cache dropped before each, the
store's raw read (`cat` of every file, the disk's bandwidth for this store) and the full
verification. For Lifeboat also: day-2-sized backups of a source with one changed file,
timed alone and then while verifications run back to back, for the latency a scrub adds.
Writes the section "Scrub and verify" of BENCHMARKS.md.

    python3 bench/verify.py --scale 1.0 --runs 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

SECTION = "## Scrub and verify"


def drop_caches():
    """Empties the page cache (root); False where the kernel does not allow it."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return True
    except OSError:
        return False


def store_dir(tool):
    return tool.dir / "ctl" / "store" if isinstance(tool, run.Lifeboat) else tool.repo


def raw_read(path):
    """Seconds to read every file under `path` once."""
    files = [str(p) for p in Path(path).rglob("*") if p.is_file()]
    t = time.monotonic()
    for i in range(0, len(files), 500):
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", *files[i:i + 500]], stdout=null, check=True)
    return time.monotonic() - t


def verify(tool):
    """(wall s, CPU s) of a full verification of the tool's store."""
    if isinstance(tool, run.Lifeboat):
        cpu0 = run.proc_cpu(tool.controller.pid)
        t = time.monotonic()
        tool.cli("verify")
        return time.monotonic() - t, run.proc_cpu(tool.controller.pid) - cpu0
    if isinstance(tool, run.Restic):
        wall, cpu, _ = run.timed(["restic", "--repo", tool.repo, "check", "--read-data"], env=tool.env)
    else:
        wall, cpu, _ = run.timed(["borg", "check", "--verify-data", tool.repo], env=tool.env)
    return wall, cpu


def backups_beside_scrub(tool, src, n):
    """Lifeboat: `n` backups (one file of the source changed before each) alone, then `n`
    while verifications run back to back: (alone, beside) lists of seconds, and how many
    verifications ran."""
    def one():
        (src / "scrub-bench-changing.bin").write_bytes(os.urandom(1 << 20))
        t = time.monotonic()
        tool.cli("backup", "bench", "--wait", "--json")
        return time.monotonic() - t

    alone = [one() for _ in range(n)]
    stop, scrubs = threading.Event(), [0]

    def scrub():
        while not stop.is_set():
            tool.cli("verify")
            scrubs[0] += 1

    th = threading.Thread(target=scrub)
    th.start()
    time.sleep(0.5)
    beside = [one() for _ in range(n)]
    stop.set()
    th.join()
    return alone, beside, scrubs[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backups", type=int, default=10, help="Lifeboat backups timed alone and beside a scrub, per run")
    args = run.tool_args(ap)()
    work = args.work
    data = work / f"data-{args.seed}-{args.scale}"
    if not (data / "manifest.json").exists():
        run.clean(data)
        run.sh(sys.executable, run.GEN, "--out", data, "--seed", args.seed, "--scale", args.scale)
    src = work / "src"
    chosen = run.make_tools(args.tools, work, src)
    cold = True
    results = {t.name: [] for t in chosen}
    for i in range(args.runs):
        for tool in chosen:
            print(f"run {i + 1}/{args.runs}: {tool.name}", flush=True)
            run.fresh_source(data, src)
            tool.init()
            tool.backup(src, "day1")
            run.to_day2(data, src)
            tool.backup(src, "day2")
            size = run.du(store_dir(tool))
            cold &= drop_caches()
            raw = raw_read(store_dir(tool))
            cold &= drop_caches()
            wall, cpu = verify(tool)
            r = {"store": size, "raw": raw, "verify": wall, "cpu": cpu}
            if isinstance(tool, run.Lifeboat):
                r["alone"], r["beside"], r["scrubs"] = backups_beside_scrub(tool, src, args.backups)
            tool.stop()
            results[tool.name].append(r)
            print(f"  {r}", flush=True)
    (work / "verify-results.json").write_text(json.dumps(results, indent=1))
    write_report(args, results, cold, {t.name: t.version() for t in chosen})


def write_report(args, results, cold, versions):
    med = lambda xs: (statistics.median(xs), min(xs), max(xs))
    span = lambda m, d=1: f"{m[0]:.{d}f} ({m[1]:.{d}f}–{m[2]:.{d}f})"
    lines = [
        SECTION,
        "",
        "Checklist row D8: each tool reads back and checks its whole store (day1 + day2 of the shared dataset);"
        " the raw read is `cat` of every file of that store, the disk's bandwidth for it.",
        "",
        f"- Command: `python3 bench/verify.py --scale {args.scale} --runs {args.runs}` (after `cargo build --release`)",
        f"- Page cache: {'dropped before each raw read and each verification (cold reads from the disk)' if cold else 'could not be dropped (warm reads: the ratio measures CPU, not the disk)'}",
        "- Versions: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()),
        "- Tools: `lifeboat verify` (every pack read, every chunk decrypted and checked against its id, every listed snapshot's"
        " chunks present); `restic check --read-data`; `borg check --verify-data`. CPU is the controller's for Lifeboat.",
        f"- Figures: median (min–max) of {args.runs} runs. MB = 10^6 bytes.",
        "",
        "| tool | store | raw read | MB/s | verify | MB/s | share of raw | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        store = statistics.median(r["store"] for r in runs)
        raw, ver, cpu = med([r["raw"] for r in runs]), med([r["verify"] for r in runs]), med([r["cpu"] for r in runs])
        share = statistics.median(r["raw"] / r["verify"] for r in runs)
        lines.append(f"| {name} | {store / 1e6:.0f} MB | {span(raw, 2)} s | {store / 1e6 / raw[0]:.0f} | {span(ver, 2)} s | {store / 1e6 / ver[0]:.0f} | {share:.0%} | {span(cpu)} |")
    lb = results.get("lifeboat")
    if lb and "alone" in lb[0]:
        alone = sorted(x for r in lb for x in r["alone"])
        beside = sorted(x for r in lb for x in r["beside"])
        scrubs = sum(r["scrubs"] for r in lb)
        worst = lambda xs: xs[-1]
        lines += [
            "",
            f"Lifeboat backups beside a scrub: {len(alone)} backups (one 1 MiB file of the day-2 source changed before each) alone,"
            f" then {len(beside)} while `lifeboat verify` ran back to back ({scrubs} verifications):"
            f" median {statistics.median(alone):.2f} s alone, {statistics.median(beside):.2f} s beside ({statistics.median(beside) / statistics.median(alone) - 1:+.0%});"
            f" slowest {worst(alone):.2f} s alone, {worst(beside):.2f} s beside ({worst(beside) / worst(alone) - 1:+.0%}; with {len(beside)} samples the slowest stands for the p99).",
        ]
    run.replace_section(args.out, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
