#!/usr/bin/env python3
"""Image workload: back up growing versions of a locally built image with Lifeboat, and
compare what each version uploads with what a `docker save | zstd -3` archive of it
weighs (what a tool without layer dedup stores per version). Then time restoring the
newest version (image removed, loaded back through the Engine, id checked).

    python3 bench/images.py [--versions 5] [--base-mb 64] [--step-mb 8]

Needs a Docker Engine (no registry: images are built FROM scratch here), zstd, and
release builds (`cargo build --release`). Appends its table to BENCHMARKS.md unless
--out is given.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import IMAGES_SECTION, REPO, Lifeboat, replace_section  # noqa: E402


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, **kw)


def build_versions(ctx: Path, name: str, versions: int, base_mb: int, step_mb: int):
    """v1: a base layer of random data; each later version adds a layer of fresh data and
    changes a small config file, on top of the previous version."""
    rng = random.Random(7)
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "base.bin").write_bytes(rng.randbytes(base_mb << 20))
    (ctx / "Dockerfile.1").write_text("FROM scratch\nCOPY base.bin /base/base.bin\nCOPY conf.1 /etc/app.conf\n")
    (ctx / "conf.1").write_text("version = 1\n")
    for v in range(2, versions + 1):
        (ctx / f"add.{v}").write_bytes(rng.randbytes(step_mb << 20))
        (ctx / f"conf.{v}").write_text(f"version = {v}\n")
        (ctx / f"Dockerfile.{v}").write_text(f"FROM {name}:{v - 1}\nCOPY add.{v} /app/add.{v}\nCOPY conf.{v} /etc/app.conf\n")
    ids = []
    for v in range(1, versions + 1):
        sh("docker", "build", "-q", "-t", f"{name}:{v}", "-f", ctx / f"Dockerfile.{v}", ctx,
           env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True)
        ids.append(subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", f"{name}:{v}"], capture_output=True, text=True, check=True).stdout.strip())
    return ids


def save_zstd_bytes(ref: str) -> int:
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    z = subprocess.run(["zstd", "-3", "-q", "-c"], stdin=save.stdout, capture_output=True, check=True)
    save.wait()
    return len(z.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--base-mb", type=int, default=64)
    ap.add_argument("--step-mb", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lifeboat-bench-images"))
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    name = f"lifeboat-bench-img-{os.getpid()}"
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        ids = build_versions(Path(tmp) / "ctx", name, args.versions, args.base_mb, args.step_mb)
        lb = Lifeboat(args.work, Path(tmp), None)
        lb.agent_args = ["--docker-restore"]
        lb.init()
        rows = []
        try:
            for v in range(1, args.versions + 1):
                wall, cpu, rss, job = lb._job("backup", "bench", "--source", f"image:{name}:{v}")
                uploaded = job["progress"]["bytes_uploaded"]
                rows.append((v, save_zstd_bytes(f"{name}:{v}"), uploaded, wall))
                print(f"  v{v}: uploaded {uploaded / 1e6:.1f} MB in {wall:.2f} s", flush=True)
            snap = job["snapshot_ids"][0]
            sh("docker", "rmi", *[f"{name}:{v}" for v in range(args.versions, 0, -1)], capture_output=True)
            wall, cpu, rss, _ = lb._job("restore", snap, "--agent", "bench")
            got = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", f"{name}:{args.versions}"], capture_output=True, text=True, check=True).stdout.strip()
            assert got == ids[-1], f"restored {got}, expected {ids[-1]}"
            restore_wall = wall
        finally:
            lb.stop()
            subprocess.run(["docker", "rmi", "-f", *[f"{name}:{v}" for v in range(1, args.versions + 1)]], capture_output=True)
    total_save = sum(r[1] for r in rows)
    total_up = sum(r[2] for r in rows)
    size_last = rows[-1][1]
    lines = [
        "",
        IMAGES_SECTION,
        "",
        f"Command: `python3 bench/images.py --versions {args.versions} --base-mb {args.base_mb} --step-mb {args.step_mb}`.",
        f"An image FROM scratch with a {args.base_mb} MiB layer of random data; each later version adds a {args.step_mb} MiB layer",
        "and changes a config file, on top of the previous one. Each version is backed up with",
        "`lifeboat backup bench --source image:NAME:V` (the Engine's export stream, chunked like any",
        "data); the comparison is a `docker save NAME:V | zstd -3` archive per version, what a tool",
        "without layer dedup keeps.",
        "",
        "| version | docker save \\| zstd -3 | Lifeboat uploaded | backup time |",
        "|---|---|---|---|",
    ]
    for v, saved, up, wall in rows:
        lines.append(f"| {v} | {saved / 1e6:.1f} MB | {up / 1e6:.2f} MB | {wall:.2f} s |")
    lines += [
        f"| all | {total_save / 1e6:.1f} MB | {total_up / 1e6:.1f} MB ({100 * total_up / total_save:.0f}%) | |",
        "",
        f"Restore of version {args.versions} ({size_last / 1e6:.0f} MB compressed) after `docker rmi`: {restore_wall:.2f} s,",
        "loaded through the Engine and checked to carry the recorded image id.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    replace_section(args.out, IMAGES_SECTION, text)


if __name__ == "__main__":
    main()
