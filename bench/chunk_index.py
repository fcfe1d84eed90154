#!/usr/bin/env python3
"""The chunk index at 10 million chunks: insert and lookup rates of the catalog, and its
size on disk per chunk (`controller/examples/chunk_index.rs`, release build).

    cargo build --release -p lifeboat-controller --examples
    python3 bench/chunk_index.py [--chunks 10000000]

Writes the "## Chunk index" section of BENCHMARKS.md unless --out is given.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, REPO, replace_section  # noqa: E402

SECTION = "## Chunk index"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/lifeboat-chunk-index"))
    ap.add_argument("--bin", type=Path, default=BIN)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    out = subprocess.run([args.bin / "examples" / "chunk_index", "--chunks", str(args.chunks), "--dir", args.dir],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(r))
    by_size = " → ".join(f"{m['inserts_per_sec'] / 1e3:.0f}k" for m in r["inserts_per_sec_by_size"])
    lines = [
        SECTION,
        "",
        f"Command: `python3 bench/chunk_index.py --chunks {args.chunks}` (after `cargo build --release -p lifeboat-controller --examples`).",
        f"Machine: {os.cpu_count()} cores; catalog on the local disk (SQLite, WAL, synchronous=NORMAL). Chunks go in as the",
        "controller records them when it seals a pack (one transaction per pack of 32 chunks); lookups are",
        "`MissingChunks` calls of 4096 ids (half stored, half new) and the per-chunk location a restore reads.",
        "",
        "| chunks | inserts/s (whole run) | inserts/s by tenth of the run | MissingChunks lookups/s | chunk locations/s | catalog size | per chunk |",
        "|---|---|---|---|---|---|---|",
        f"| {r['chunks']:,} | {r['inserts_per_sec'] / 1e3:.0f}k | {by_size} | {r['missing_chunks_lookups_per_sec'] / 1e3:.0f}k | "
        f"{r['chunk_locations_per_sec'] / 1e3:.0f}k | {r['catalog_bytes'] / 2**30:.2f} GiB | {r['bytes_per_chunk']:.0f} B |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
