#!/usr/bin/env python3
"""Ratios of ratewarden's decision time to governor's and to a naive Mutex<HashMap>.

Runs `cargo bench -p ratewarden-store --bench memory_store` RUNS times (default 3) and
reads criterion's estimates after each (target/criterion/<workload>/<limiter>/new/).
Prints, per workload, the median over runs of each mean time and of each ratio. On a
noisy shared machine the ratios within one run are what to compare, and the median over
several runs keeps one disturbed run from deciding the figure.

Usage: python3 scripts/bench_ratios.py [--runs N] [--no-run]
"""
import argparse
import json
import pathlib
import statistics
import subprocess

root = pathlib.Path("target/criterion")
workloads = ["a_hot_key", "b_100k_keys_round_robin", "c_2_threads_distinct_keys"]
limiters = ["ratewarden", "governor", "mutex_hashmap"]


def mean_ns(workload: str, limiter: str) -> float:
    path = root / workload / limiter / "new" / "estimates.json"
    return json.loads(path.read_text())["mean"]["point_estimate"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-run", action="store_true", help="only read the last run")
    args = parser.parse_args()
    runs = []
    for _ in range(1 if args.no_run else args.runs):
        if not args.no_run:
            subprocess.run(
                ["cargo", "bench", "-q", "-p", "ratewarden-store", "--bench", "memory_store"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        runs.append({(w, l): mean_ns(w, l) for w in workloads for l in limiters})
    print(f"median of {len(runs)} run(s)")
    print("| workload | ratewarden ns | governor ns | mutex_hashmap ns | ratewarden / governor | ratewarden / mutex_hashmap | ratios per run (vs governor) |")
    print("|---|---|---|---|---|---|---|")
    for w in workloads:
        med = {l: statistics.median(r[(w, l)] for r in runs) for l in limiters}
        vs_gov = [r[(w, "ratewarden")] / r[(w, "governor")] for r in runs]
        vs_mutex = [r[(w, "ratewarden")] / r[(w, "mutex_hashmap")] for r in runs]
        print(
            f"| {w} | {med['ratewarden']:.1f} | {med['governor']:.1f} | {med['mutex_hashmap']:.1f} "
            f"| {statistics.median(vs_gov):.2f} | {statistics.median(vs_mutex):.2f} "
            f"| {', '.join(f'{x:.2f}' for x in vs_gov)} |"
        )


if __name__ == "__main__":
    main()
