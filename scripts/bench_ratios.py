#!/usr/bin/env python3
"""Ratio table from the last `cargo bench -p ratewarden-store --bench memory_store` run.

Reads criterion's estimates (target/criterion/decision/<limiter>/<workload>/new/) and
prints, per workload, the mean time of each limiter and ratewarden's time divided by the
others'. Ratios from one run are what to compare on a noisy machine, not absolute times.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion/decision")
limiters = ["ratewarden", "governor", "mutex_hashmap"]


def mean_ns(limiter: str, workload: str) -> float:
    path = root / limiter / workload / "new" / "estimates.json"
    return json.loads(path.read_text())["mean"]["point_estimate"]


workloads = sorted(p.name for p in (root / "ratewarden").iterdir() if (p / "new").is_dir())
print("| workload | ratewarden ns | governor ns | mutex_hashmap ns | ratewarden / governor | ratewarden / mutex_hashmap |")
print("|---|---|---|---|---|---|")
for w in workloads:
    t = {name: mean_ns(name, w) for name in limiters}
    print(
        f"| {w} | {t['ratewarden']:.1f} | {t['governor']:.1f} | {t['mutex_hashmap']:.1f} "
        f"| {t['ratewarden'] / t['governor']:.2f} | {t['ratewarden'] / t['mutex_hashmap']:.2f} |"
    )
