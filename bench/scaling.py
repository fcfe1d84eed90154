#!/usr/bin/env python3
"""How Lifeboat's first backup stands against the machine, and how it scales.

1. The ceiling: the agent's CPU work alone (`core/examples/ceiling.rs`: files read from the
   page cache, FastCDC, keyed BLAKE3, zstd at Lifeboat's default level with the same skip of
   incompressible chunks), with 1 thread and with one per core; no network, no store.
2. The real first backup of day1 (controller + agent over mTLS, store on local disk), with
   both processes held to 1 core (`taskset -c 0`) and with all cores, as a fraction of the
   ceiling on as many cores.
3. Peak agent RSS during the first backup and during a restore of it into RAM at several
   scales, against restic's on the same data (flat means bounded by the pipeline, not by
   the source). `--memory-only` runs this part alone.

    cargo build --release --workspace --bins --examples
    python3 bench/scaling.py --scales 0.25 1 4 --runs 3 --work /var/tmp/lifeboat-bench

Writes the "## Scaling and memory" and "## Memory across scales" sections of BENCHMARKS.md.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402
from run import DEFAULT_LEVEL, GEN, REPO, Lifeboat, Restic, fresh_source, replace_section, sh  # noqa: E402

SECTION = "## Scaling and memory"
MEMORY_SECTION = "## Memory across scales"


def dataset(work, seed, scale):
    data = work / f"data-{seed}-{scale}"
    if not (data / "manifest.json").exists():
        run.clean(data)
        sh(sys.executable, GEN, "--out", data, "--seed", seed, "--scale", scale)
    return data, json.loads((data / "manifest.json").read_text())


def ceiling(bin_dir, day1, threads):
    out = subprocess.run([bin_dir / "examples" / "ceiling", day1, "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def lifeboat_backup(work, data, prefix=(), restore=False):
    """The first backup's (wall, cpu, agent peak rss); with `restore`, also a restore of
    it into RAM (its own agent peak: the high-water mark is reset before each job)."""
    src = work / "src"
    fresh_source(data, src)
    lb = Lifeboat(work, src, prefix=prefix)
    lb.init()
    run.warm_memory(quiet=True)
    try:
        backup = lb.backup(src, "day1")
        if not restore:
            return backup
        return backup, restore_into_ram(lb, src)
    finally:
        lb.stop()


def restore_into_ram(tool, src):
    shm = Path("/dev/shm/lifeboat-bench") / "scaling"
    run.clean(shm)
    shm.parent.mkdir(parents=True, exist_ok=True)
    run.warm_memory(quiet=True)
    try:
        r = tool.restore(shm)
        if not run.same_tree(src, tool.restored_root(shm, src)):
            sys.exit(f"{tool.name}: the restore into RAM differs from the source")
        return r
    finally:
        run.clean(shm)


def profiled_backup(work, data):
    """One all-core first backup under `perf record` (both processes); the stage table of
    bench/profile_summary.py, or None without perf."""
    if not shutil.which("perf"):
        return None
    src = work / "src"
    fresh_source(data, src)
    lb = Lifeboat(work, src)
    lb.init()
    out = work / "backup.perf"
    try:
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-o", out,
                                 "-p", f"{lb.controller.pid},{lb.agent.pid}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run.time.sleep(1)
        run.warm_memory(quiet=True)
        lb.backup(src, "day1")
        perf.send_signal(signal.SIGINT)
        perf.wait()
    finally:
        lb.stop()
    script = subprocess.run(["perf", "script", "-F", "comm,pid,tid,ip,sym,dso", "-i", out], capture_output=True, text=True).stdout
    return subprocess.run([sys.executable, Path(__file__).resolve().parent / "profile_summary.py"], input=script,
                          capture_output=True, text=True, check=True).stdout


def restic_backup(work, data, restore=False):
    src = work / "src"
    fresh_source(data, src)
    r = Restic(work)
    r.init()
    run.warm_memory(quiet=True)
    backup = r.backup(src, "day1")
    if not restore:
        return backup
    r.restore_tag = "day1"
    return backup, restore_into_ram(r, src)


def med(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=3, help="runs of the ceiling and of the 1-core/all-core backups (scale 1)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lifeboat-bench"))
    ap.add_argument("--bin", type=Path, default=run.BIN)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--base-scale", type=float, default=1.0, help="the data of the ceiling, the core scaling and the profile")
    ap.add_argument("--memory-only", action="store_true", help="only part 3: peak RSS of backup and restore at each scale")
    ap.add_argument("--smoke", action="store_true",
                    help="CI: everything once at scale 0.001, report to WORK; checks that it runs and that the report parses")
    args = ap.parse_args()
    if args.smoke:
        args.base_scale, args.scales, args.runs = 0.001, [0.001], 1
        args.out = args.work / "BENCHMARKS.smoke.md"
        args.out.unlink(missing_ok=True)
    run.BIN = args.bin
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count()
    data, manifest = dataset(work, args.seed, args.base_scale)
    if not args.smoke:
        run.warm_memory()
    day1 = data / "day1"
    mb = manifest["day1"]["bytes"] / 1e6

    res = {"ceiling": {}, "backup": {}, "rss": {}, "profile": None}
    for scale in args.scales:
        d, m = dataset(work, args.seed, scale)
        (lw, _, lrss), (lrw, _, lrrss) = lifeboat_backup(work, d, restore=True)
        (rw, _, rrss), (rrw, _, rrrss) = restic_backup(work, d, restore=True)
        res["rss"][scale] = {"bytes": m["day1"]["bytes"], "files": m["day1"].get("files"),
                             "lifeboat": [lw, lrss], "restic": [rw, rrss],
                             "lifeboat_restore": [lrw, lrrss], "restic_restore": [rrw, rrrss]}
        print(f"scale {scale}: backup lifeboat {lrss >> 20} MiB ({lw:.1f} s), restic {rrss >> 20} MiB ({rw:.1f} s); "
              f"restore lifeboat {lrrss >> 20} MiB ({lrw:.1f} s), restic {rrrss >> 20} MiB ({rrw:.1f} s)", flush=True)
    memory = [MEMORY_SECTION, "",
              f"Command: `python3 bench/scaling.py --memory-only --scales {' '.join(str(s) for s in args.scales)}` "
              f"(or the full run of the section above). Peak RSS of the agent (restic: its whole process) during the first "
              f"backup of day1 and during a restore of that snapshot into RAM (`/dev/shm`, checked against the source), "
              f"each step's own peak (the agent's high-water mark is reset before each job), one run per scale:", "",
              "| scale | day1 | files | lifeboat backup RSS | backup | restic backup RSS | backup | lifeboat restore RSS | restore | restic restore RSS | restore |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scale in args.scales:
        r = res["rss"][scale]
        mib = lambda k: f"{r[k][1] / 2**20:.0f} MiB | {r[k][0]:.1f} s"
        memory.append(f"| {scale} | {r['bytes'] / 1e9:.2f} GB | {r['files'] or '?'} | {mib('lifeboat')} | {mib('restic')} "
                      f"| {mib('lifeboat_restore')} | {mib('restic_restore')} |")
    replace_section(args.out, MEMORY_SECTION, "\n".join(memory))
    if args.memory_only:
        (work / "memory.json").write_text(json.dumps(res["rss"], indent=1))
        print(f"wrote {args.out}")
        if args.smoke:
            check(args.out, args.scales, memory_only=True)
        return
    for threads in sorted({1, cores}):
        runs = [ceiling(args.bin, day1, threads) for _ in range(args.runs)]
        res["ceiling"][threads] = runs
        print(f"ceiling, {threads} thread(s): {[round(r['mb_per_s']) for r in runs]} MB/s", flush=True)
    for label, prefix in (("1", ["taskset", "-c", "0"]), (str(cores), [])):
        runs = [lifeboat_backup(work, data, prefix) for _ in range(args.runs)]
        res["backup"][label] = runs
        print(f"first backup on {label} core(s): {[round(w, 2) for w, _, _ in runs]} s", flush=True)
    profile = profiled_backup(work, data)
    res["profile"] = profile
    (work / "scaling.json").write_text(json.dumps(res, indent=1))

    lines = [SECTION, "",
             f"Command: `python3 bench/scaling.py --scales {' '.join(str(s) for s in args.scales)} --runs {args.runs}` "
             f"(after `cargo build --release --workspace --bins --examples`). Machine: {cores} cores, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM. Data: seed {args.seed}, day1 of scale {args.base_scale} ({mb:.0f} MB) "
             f"unless said. Median of {args.runs} runs (min–max).", "",
             "The ceiling is the agent's CPU work alone (`core/examples/ceiling.rs`: page-cache reads, FastCDC, keyed BLAKE3, "
             f"zstd at the default level {DEFAULT_LEVEL} with incompressible chunks stored raw), no network and no store. "
             "The backup is the real one: controller and agent over mTLS on loopback, store on the local disk, "
             "both processes held to the cores given (`taskset`).", "",
             "| cores | ceiling MB/s | ceiling CPU s | first backup | MB/s | CPU s (both processes) | share of the ceiling |",
             "|---|---|---|---|---|---|---|"]
    for threads in sorted({1, cores}):
        c = med([r["mb_per_s"] for r in res["ceiling"][threads]])
        ccpu = med([r["cpu_seconds"] for r in res["ceiling"][threads]])
        b = res["backup"][str(threads)]
        wall = med([w for w, _, _ in b])
        cpu = med([c_ for _, c_, _ in b])
        rate = mb / wall[0]
        lines.append(f"| {threads} | {c[0]:.0f} ({c[1]:.0f}–{c[2]:.0f}) | {ccpu[0]:.2f} | {wall[0]:.2f} s ({wall[1]:.2f}–{wall[2]:.2f}) "
                     f"| {rate:.0f} | {cpu[0]:.1f} | {100 * rate / c[0]:.0f}% |")
    c1 = res["ceiling"][cores][0]
    lines += ["", f"Ceiling CPU by stage ({cores} threads, one run, summed over threads): read+chunk {c1['cpu_read_chunk']:.2f} s, "
              f"hash {c1['cpu_hash']:.2f} s, compress {c1['cpu_compress']:.2f} s; day1 encodes to {c1['encoded_bytes'] / 1e6:.0f} MB.", ""]
    if profile:
        lines += ["Where a real first backup's CPU goes (both processes, all cores; `perf record -e cpu-clock -g`, folded by "
                  "`bench/profile_summary.py`: a sample counts for the stage of its leaf function or, in the kernel, of the "
                  "system call it serves):", "", profile.strip(), ""]
    lines += [f"Peak memory at each scale, backup and restore: \"{MEMORY_SECTION[3:]}\" below."]
    replace_section(args.out, SECTION, "\n".join(lines))
    print(f"wrote {args.out}")
    if args.smoke:
        check(args.out, args.scales)


def check(path, scales, memory_only=False):
    """The smoke run's check: the tables are there and their figures parse."""
    rows = [line.split("|")[1:-1] for line in path.read_text().splitlines() if line.startswith("| ") and not line.startswith("| cores") and not line.startswith("| scale") and not line.startswith("| stage")]
    cores = [r for r in rows if r[0].strip().isdigit()]
    rss = [r for r in rows if r[0].strip() in {str(s) for s in scales}]
    if (len(cores) < 1 and not memory_only) or len(rss) != len(scales):
        sys.exit(f"smoke: expected the scaling and memory tables in {path}")
    for r in cores:
        float(r[1].split()[0]), float(r[3].split()[0]), float(r[6].strip().rstrip("%"))
    for r in rss:
        for col in (3, 5, 7, 9):
            float(r[col].split()[0])
    print("smoke ok: scaling and memory")


if __name__ == "__main__":
    main()
