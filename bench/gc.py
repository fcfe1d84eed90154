#!/usr/bin/env python3
"""Garbage collection throughput (checklist row D4): Lifeboat's `lifeboat gc`, restic's
`prune` and borg's `compact`, each reclaiming what a deleted snapshot alone held, on the
same data in the same run.

For each tool and run: a fresh store holding day1 and day2 of the shared dataset (as
`bench/run.py` makes them, untimed); day1's snapshot is deleted (`lifeboat snapshots
delete`, `restic forget`, `borg delete`, untimed), then the timed step reads what every
remaining snapshot references, and removes or rewrites the packs that hold what nothing
references, with each tool's default threshold for rewriting a pack that is partly dead;
then a second timed step rewrites every pack still holding a dead byte (`lifeboat gc
--compact-below 1`, `restic prune --max-unused 0`, `borg compact --threshold 0`). Lifeboat
runs with `--gc-lease 0s` so that everything unreferenced may go at once (in service the
lease keeps a running backup's chunks), from a local store and from SeaweedFS (`--tools
lifeboat,lifeboat-s3,restic,borg`). Reported: wall and CPU time (the controller's for
Lifeboat), bytes reclaimed, and for Lifeboat the chunks it marked and swept per second.
Writes the section "Garbage collection" of BENCHMARKS.md.

    python3 bench/gc.py --scale 1.0 --runs 3
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

SECTION = "## Garbage collection"


def tools(names, work, src):
    make = {
        "lifeboat": lambda: run.Lifeboat(work, src),
        "lifeboat-s3": lambda: run.Lifeboat(work, src, store="s3"),
        "restic": lambda: run.Restic(work),
        "borg": lambda: run.Borg(work),
    }
    out = []
    for name in names.split(","):
        t = make[name]()
        if isinstance(t, run.Lifeboat):
            t.controller_args = ["--gc-lease", "0s", "--prune-every", "0s"]
        out.append(t)
    return out


def forget(tool, day1):
    """Deletes day1's snapshot (untimed)."""
    if isinstance(tool, run.Lifeboat):
        tool.cli("snapshots", "delete", day1)
    elif isinstance(tool, run.Restic):
        # `forget` with a tag and no policy forgets nothing: name the snapshot.
        snaps = json.loads(subprocess.run(["restic", "--repo", tool.repo, "snapshots", "--tag", "day1", "--json"],
                                          env=tool.env, capture_output=True, text=True, check=True).stdout)
        if len(snaps) != 1:
            sys.exit(f"restic: {len(snaps)} snapshots tagged day1")
        run.sh("restic", "--repo", tool.repo, "forget", snaps[0]["id"], env=tool.env, capture_output=True)
    else:
        run.sh("borg", "delete", f"{tool.repo}::day1", env=tool.env, capture_output=True)


def collect(tool, everything):
    """Times one collection, with the tool's default threshold or (`everything`) rewriting
    every pack that holds a dead byte: a result dict."""
    if isinstance(tool, run.Lifeboat):
        cpu0 = run.proc_cpu(tool.controller.pid)
        t = time.monotonic()
        report = json.loads(tool.cli("gc", "--json", *(["--compact-below", "1"] if everything else [])))
        wall = time.monotonic() - t
        cpu = run.proc_cpu(tool.controller.pid) - cpu0
        # As GC counts it: SeaweedFS frees a deleted object's disk space later, by itself.
        return {"wall": wall, "cpu": cpu, "reclaimed": report["bytes_reclaimed"], "report": report}
    before = tool.store_bytes()
    if isinstance(tool, run.Restic):
        wall, cpu, rss = run.timed(["restic", "--repo", tool.repo, "prune", *(["--max-unused", "0"] if everything else [])], env=tool.env)
    else:
        wall, cpu, rss = run.timed(["borg", "compact", *(["--threshold", "0"] if everything else []), str(tool.repo)], env=tool.env)
    return {"wall": wall, "cpu": cpu, "rss": rss, "reclaimed": before - tool.store_bytes()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=3)
    args = run.tool_args(ap, tools="lifeboat,lifeboat-s3,restic,borg")()
    work = args.work
    data = work / f"data-{args.seed}-{args.scale}"
    if not (data / "manifest.json").exists():
        run.clean(data)
        run.sh(sys.executable, run.GEN, "--out", data, "--seed", args.seed, "--scale", args.scale)
    src = work / "src"
    chosen = tools(args.tools, work, src)
    results = {t.name: [] for t in chosen}
    for i in range(args.runs):
        for tool in chosen:
            print(f"run {i + 1}/{args.runs}: {tool.name}", flush=True)
            run.fresh_source(data, src)
            tool.init()
            tool.backup(src, "day1")
            day1 = getattr(tool, "last_snapshot", None)
            run.to_day2(data, src)
            tool.backup(src, "day2")
            stored = tool.store_bytes()
            forget(tool, day1)
            r = collect(tool, False)
            r["store"] = stored
            r["everything"] = collect(tool, True)
            if isinstance(tool, run.Lifeboat):
                # What is left still restores: GC removed nothing day2 needs.
                tool.cli("verify")
            tool.stop()
            results[tool.name].append(r)
            print(f"  {r}", flush=True)
    versions = {t.name: t.version() for t in chosen}
    (work / "gc-results.json").write_text(json.dumps({"results": results, "versions": versions}, indent=1))
    write_report(args, results, versions)


def write_report(args, results, versions):
    med = lambda xs: (statistics.median(xs), min(xs), max(xs))
    span = lambda m, d=1: f"{m[0]:.{d}f} ({m[1]:.{d}f}–{m[2]:.{d}f})"

    def rows(step):
        out = []
        for name, runs in results.items():
            runs = [step(r) for r in runs]
            store = statistics.median(r["store"] for r in results[name])
            reclaimed = statistics.median(r["reclaimed"] for r in runs)
            wall, cpu = med([r["wall"] for r in runs]), med([r["cpu"] for r in runs])
            if "report" in runs[0]:
                ref = statistics.median(r["report"]["referenced"] for r in runs)
                swept = statistics.median(r["report"]["swept"] for r in runs)
                rate = med([(r["report"]["referenced"] + r["report"]["swept"]) / r["wall"] for r in runs])
                packs = f"{statistics.median(r['report']['packs_deleted'] for r in runs):.0f} / {statistics.median(r['report']['packs_compacted'] for r in runs):.0f}"
                chunks = f"{ref:,.0f} | {swept:,.0f} | {span(rate, 0)}"
            else:
                chunks, packs = "– | – | –", "–"
            out.append(f"| {name} | {store / 1e6:.0f} MB | {reclaimed / 1e6:.0f} MB | {span(wall, 2)} s | {span(cpu)} | {chunks} | {packs} |")
        return out
    lines = [
        SECTION,
        "",
        "Checklist row D4's throughput: each tool's store holds day1 and day2 of the shared dataset; day1's snapshot is"
        " deleted, then the collection is timed: reading what day2 references and removing or rewriting the packs that"
        " hold only what day1 needed.",
        "",
        f"- Command: `python3 bench/gc.py --scale {args.scale} --runs {args.runs}` (after `cargo build --release`)",
        "- Versions: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()),
        "- Tools: `lifeboat gc` (controller with `--gc-lease 0s`; local store, and SeaweedFS on loopback for lifeboat-s3);"
        " `restic prune` after `restic forget` of day1's snapshot (defaults: repacks a pack once more than 5% of the repository is unused);"
        " `borg compact` after `borg delete ::day1`. CPU is the controller's for Lifeboat, the command's for the others.",
        f"- Figures: median (min–max) of {args.runs} runs. MB = 10^6 bytes. Reclaimed: as `lifeboat gc` reports it"
        " (packs deleted, and what compaction saved), the store's size before and after for the others.",
        "",
        "With each tool's default threshold (Lifeboat rewrites a pack once less than half of it is referenced, restic once"
        " more than 5% of the repository is unused, borg a segment once 10% of it is free):",
        "",
        "| tool | store before | reclaimed | wall | CPU s | chunks referenced | chunks swept | chunks/s | packs deleted / compacted |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows(lambda r: r),
        "",
        "Then every pack still holding a dead byte rewritten (`lifeboat gc --compact-below 1`, `restic prune --max-unused 0`,"
        " `borg compact --threshold 0`):",
        "",
        "| tool | store before | reclaimed | wall | CPU s | chunks referenced | chunks swept | chunks/s | packs deleted / compacted |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows(lambda r: r["everything"]),
        "",
        "Lifeboat's chunks/s is (chunks referenced + chunks swept) / wall. In the first table that is the mark (every tree of"
        " every remaining snapshot read from the store, opened and decoded) and the sweep (the index rows of what nothing"
        " references dropped under the commit lock); in the second, the wall is mostly compaction (every live blob of a"
        " rewritten pack read, checked against its id and written into a new pack, made durable before the index moves"
        " and the old pack goes). A chunk swept from the index is reclaimed on disk only when its pack is rewritten or"
        " deleted.",
    ]
    run.replace_section(args.out, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
