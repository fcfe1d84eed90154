#!/usr/bin/env python3
"""A simulated week of the benchmark dataset, for the ransomware signals' false-positive rate.

Day 1 is the shared generator's day1 and day 2 its day2 (same seed: the very trees every
benchmark uses); each later day applies the generator's day-2 edit script to the day before
with the seed plus the day's offset (edits in place, insertions, appends, new and deleted
files: about 4% of the bytes a day).

    python3 bench/week.py --out DIR [--scale 0.01] [--seed 42] [--days 7]
"""

import argparse
import importlib.util
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
GEN = REPO.parent / "shared" / "bench" / "gen_dataset.py"
if not GEN.exists():
    GEN = REPO / "bench" / "gen_dataset.py"


def generator():
    spec = importlib.util.spec_from_file_location("gen_dataset", GEN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--days", type=int, default=7)
    a = ap.parse_args()
    gen = generator()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tm = gen.TextModel(a.seed)
    gen.gen_day1(str(out / "day1"), a.seed, a.scale, tm)
    days = {"day1": dict(zip(("files", "bytes"), gen.tree_stats(str(out / "day1"))))}
    for d in range(2, a.days + 1):
        st = gen.gen_day2(str(out / f"day{d - 1}"), str(out / f"day{d}"), a.seed + d - 2, a.scale, tm)
        files, size = gen.tree_stats(str(out / f"day{d}"))
        days[f"day{d}"] = {"files": files, "bytes": size, "changes": st}
    print(json.dumps({"generator": str(GEN), "scale": a.scale, "seed": a.seed, "days": days}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
