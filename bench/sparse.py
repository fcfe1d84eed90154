#!/usr/bin/env python3
"""Sparse files (checklist row B10): one sparse file, a disk image of SIZE with a few
islands of data, backed up and restored by Lifeboat, restic and borg, same file, same run:
wall time and CPU of each, and how much of the restored file is allocated on disk.

Lifeboat steps over a file's holes (SEEK_HOLE / SEEK_DATA) and restores its chunks of
zeros as holes; restic and borg read the zeros. Restores use each tool's own sparse
option where it has one (borg `extract --sparse`; this restic has none).
Writes the section "Sparse files" of BENCHMARKS.md.

    python3 bench/sparse.py --size-gib 16 --runs 3
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

SECTION = "## Sparse files"
ISLANDS = [(0, 8 << 20), (5 << 30, 1 << 20), ((11 << 30) + 4097, 64 << 10)]


def make_image(path, size):
    """A sparse file of `size` bytes with random data at `ISLANDS` (those inside it) and
    at its last 4 MiB; returns the bytes of data."""
    rng = random.Random(4242)
    islands = [(o, n) for o, n in ISLANDS if o + n <= size] + [(size - (4 << 20), 4 << 20)]
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in islands:
            f.seek(off)
            f.write(rng.randbytes(n))
    return sum(n for _, n in islands)


def restore(tool, target):
    """(wall s, CPU s, peak RSS) of restoring the snapshot into `target`, sparse where the
    tool can."""
    if isinstance(tool, run.Borg):
        target.mkdir(parents=True, exist_ok=True)
        return run.timed(["borg", "extract", "--sparse", f"{tool.repo}::sparse"], cwd=target, env=tool.env)
    return tool.restore(target)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = run.tool_args(ap)()
    work = args.work
    src = work / "sparse-src"
    run.clean(src)
    src.mkdir()
    size = args.size_gib << 30
    data = make_image(src / "disk.img", size)
    allocated = os.stat(src / "disk.img").st_blocks * 512
    chosen = run.make_tools(args.tools, work, src)
    for tool in chosen:
        tool.restore_tag = "sparse"
    results = {t.name: [] for t in chosen}
    for i in range(args.runs):
        for tool in chosen:
            print(f"run {i + 1}/{args.runs}: {tool.name}", flush=True)
            tool.init()
            b_wall, b_cpu, _ = tool.backup(src, "sparse")
            target = work / "restores" / f"sparse-{tool.name}"
            run.clean(target)
            r_wall, r_cpu, _ = restore(tool, target)
            out = Path(tool.restored_root(target, src)) / "disk.img"
            same = subprocess.run(["cmp", src / "disk.img", out], capture_output=True).returncode == 0
            r = {"backup": b_wall, "backup_cpu": b_cpu, "restore": r_wall, "restore_cpu": r_cpu,
                 "allocated": os.stat(out).st_blocks * 512, "same": same, "store": tool.store_bytes()}
            shutil.rmtree(target)
            tool.stop()
            results[tool.name].append(r)
            print(f"  {r}", flush=True)
    write_report(args, size, data, allocated, results, {t.name: t.version() for t in chosen})


def write_report(args, size, data, allocated, results, versions):
    med = lambda xs: (statistics.median(xs), min(xs), max(xs))
    span = lambda m, d=1: f"{m[0]:.{d}f} ({m[1]:.{d}f}–{m[2]:.{d}f})"
    lines = [
        SECTION,
        "",
        f"Checklist row B10's sparse file, scaled: one disk image of {size >> 30} GiB holding {data / 2**20:.0f} MiB of"
        f" random data in four islands (one at an odd offset), {allocated / 2**20:.0f} MiB allocated; each tool backs it up"
        " into a fresh store and restores it; the restored file is compared byte for byte with the source (`cmp`).",
        "",
        f"- Command: `python3 bench/sparse.py --size-gib {args.size_gib} --runs {args.runs}` (after `cargo build --release`)",
        "- Versions: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()),
        "- Restores: Lifeboat leaves a sparse file's chunks of zeros as holes; `borg extract --sparse`; restic "
        "(this version has no sparse restore) writes the zeros. CPU is the controller's and the agent's for Lifeboat.",
        f"- Figures: median (min–max) of {args.runs} runs.",
        "",
        "| tool | backup s | backup CPU s | restore s | restore CPU s | restored allocated | identical | store |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        alloc = statistics.median(r["allocated"] for r in runs)
        lines.append(
            f"| {name} | {span(med([r['backup'] for r in runs]), 2)} | {span(med([r['backup_cpu'] for r in runs]))}"
            f" | {span(med([r['restore'] for r in runs]), 2)} | {span(med([r['restore_cpu'] for r in runs]))}"
            f" | {alloc / 2**20:.0f} MiB | {'yes' if all(r['same'] for r in runs) else 'NO'}"
            f" | {statistics.median(r['store'] for r in runs) / 2**20:.0f} MiB |")
    run.replace_section(args.out, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
