#!/usr/bin/env python3
"""Many files (checklist rows B9 and B10 at scale): N small files in one directory, and one
file with N hard links in one directory, each backed up into a fresh store and restored
(into RAM, `/dev/shm`) by Lifeboat, restic and borg, for several N: wall time and peak RSS of each backup and
restore (Lifeboat's agent; the restic or borg process), how time grows per doubling of N,
and a check of each restore (every name there, every content right, the links one inode).

    python3 bench/many_files.py --counts 250000 500000 1000000 --runs 1

Writes the section "Many files" of BENCHMARKS.md.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

SECTION = "## Many files"


def make_source(src, shape, n):
    """`files`: n files `f-000000`... holding their own number; `links`: one file and n
    links to it, all in one directory."""
    run.clean(src)
    d = src / "one-dir"
    d.mkdir(parents=True)
    if shape == "files":
        for i in range(n):
            with open(d / f"f-{i:07d}", "w") as f:
                f.write(f"{i}\n")
    else:
        (d / "target").write_bytes(b"one inode, many names\n" * 100)
        for i in range(n):
            os.link(d / "target", d / f"l-{i:07d}")
    os.sync()


def check_restore(root, shape, n):
    """Whether the restored directory holds what the source did (every name; contents or
    one shared inode)."""
    d = Path(root) / "one-dir"
    names = os.listdir(d)
    if shape == "files":
        if len(names) != n:
            return False
        return all((d / f"f-{i:07d}").read_text() == f"{i}\n" for i in range(0, n, max(1, n // 2000)))
    if len(names) != n + 1:
        return False
    ino = os.stat(d / "target").st_ino
    return os.stat(d / "target").st_nlink == n + 1 and all(
        os.stat(d / f"l-{i:07d}").st_ino == ino for i in range(0, n, max(1, n // 2000)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[250000, 500000, 1000000])
    ap.add_argument("--shapes", default="files,links")
    ap.add_argument("--runs", type=int, default=1)
    args = run.tool_args(ap)()
    work = args.work
    src = work / "many-src"
    chosen = run.make_tools(args.tools, work, src)
    results = []
    for shape in args.shapes.split(","):
        # ext4 gives an inode at most 65,000 names: the links live in RAM (tmpfs has no cap).
        src = work / "many-src" if shape == "files" else Path("/dev/shm/lifeboat-bench/many-links-src")
        for n in args.counts:
            make_source(src, shape, n)
            for tool in chosen:
                tool.restore_tag = "many"
                if isinstance(tool, run.Lifeboat):
                    tool.src = src  # the agent's source, given when it starts
                for i in range(args.runs):
                    print(f"{shape} {n}: {tool.name} run {i + 1}/{args.runs}", flush=True)
                    tool.init()
                    b_wall, _, b_rss = tool.backup(src, "many")
                    # Into RAM: on a disk file system, every tool's restore slows down with the
                    # inodes the runs before it freed (ext4's allocator skips recently deleted
                    # ones: `perf` shows the kernel in `recently_deleted`), which measures the
                    # benchmark's churn, not the tools.
                    target = Path("/dev/shm/lifeboat-bench") / f"many-{tool.name}"
                    run.clean(target)
                    if isinstance(tool, run.Borg):
                        target.mkdir(parents=True)
                        r_wall, _, r_rss = run.timed(["borg", "extract", f"{tool.repo}::many"], cwd=target, env=tool.env)
                    else:
                        r_wall, _, r_rss = tool.restore(target)
                    ok = check_restore(tool.restored_root(target, src), shape, n)
                    run.clean(target)
                    tool.stop()
                    r = {"shape": shape, "n": n, "tool": tool.name, "backup": b_wall, "backup_rss": b_rss,
                         "restore": r_wall, "restore_rss": r_rss, "ok": ok}
                    results.append(r)
                    print(f"  {r}", flush=True)
        run.clean(src)
    write_report(args, results, {t.name: t.version() for t in chosen})


def write_report(args, results, versions):
    mib = lambda b: f"{b / 2**20:.0f}"
    lines = [
        SECTION,
        "",
        "Checklist rows B9 and B10 at scale: `files` is N files of a few bytes each (each its own content) in one"
        " directory; `links` is one 2 KiB file and N hard links to it in one directory. Each tool backs the source up"
        " into a fresh store and restores it into RAM (`/dev/shm`); the restore is checked (every name; the contents of one file in"
        " N/2000, or that every sampled link is the one inode with N+1 names).",
        "",
        f"- Command: `python3 bench/many_files.py --counts {' '.join(map(str, args.counts))} --runs {args.runs}` (after `cargo build --release`)",
        "- Versions: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()),
        "- Peak RSS: Lifeboat's agent (its high-water mark reset before each job); restic's and borg's process (GNU time).",
        "  Growth: the time at N over the time at N/2 (the checklist asks for at most 1.2 per doubling beyond 2.0, i.e. near-linear).",
        f"- Figures: median of {args.runs} run(s).",
        "",
        "| shape | N | tool | backup s | backup peak RSS MiB | restore s | restore peak RSS MiB | backup / restore growth per doubling | restore right |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (r["shape"], r["n"], r["tool"])
    groups = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    med = lambda rs, f: statistics.median(r[f] for r in rs)
    for (shape, n, tool), rs in groups.items():
        half = groups.get((shape, n // 2, tool))
        growth = (f"{med(rs, 'backup') / med(half, 'backup'):.2f} / {med(rs, 'restore') / med(half, 'restore'):.2f}"
                  if half else "")
        lines.append(
            f"| {shape} | {n:,} | {tool} | {med(rs, 'backup'):.1f} | {mib(med(rs, 'backup_rss'))} | {med(rs, 'restore'):.1f}"
            f" | {mib(med(rs, 'restore_rss'))} | {growth} | {'yes' if all(r['ok'] for r in rs) else 'NO'} |")
    run.replace_section(args.out, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
