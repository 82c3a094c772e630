"""`make bench`: run every benchmark, print one table of figures with their targets, write results.json.

    python -m benchmarks.run                 # the full run (under 15 minutes on an idle 2-core machine)
    python -m benchmarks.run --quick         # tiny sizes: the smoke test of the benchmark code itself
    python -m benchmarks.run --only training_overhead sampling --train-steps 60

Exit status: 0 when every benchmark ran (a missed target is reported, not an error), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import (
    end_to_end,
    eval_scaling,
    knn,
    precision,
    sampling,
    startup,
    training_overhead,
    world_size,
)
from benchmarks.common import ROOT, Figure, loadavg, table

BENCHMARKS = (
    "training_overhead",
    "precision",
    "sampling",
    "eval_scaling",
    "knn",
    "world_size",
    "startup",
    "end_to_end",
)


def _jobs(
    args: argparse.Namespace,
) -> dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict], list[Figure]]]]:
    q = args.quick
    return {
        "training_overhead": (
            lambda: training_overhead.run(q, args.train_steps, args.segment),
            training_overhead.figures,
        ),
        "precision": (lambda: precision.run(q), precision.figures),
        "sampling": (lambda: sampling.run(q), sampling.figures),
        "eval_scaling": (
            lambda: eval_scaling.run(q, tuple(args.eval_sizes) if args.eval_sizes else None),
            eval_scaling.figures,
        ),
        "knn": (lambda: knn.run(q), knn.figures),
        "world_size": (lambda: world_size.run(q), world_size.figures),
        "startup": (lambda: startup.run(q), startup.figures),
        "end_to_end": (lambda: end_to_end.run(q, dvc_check=not (q or args.no_dvc)), end_to_end.figures),
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, no DVC copy (the smoke test)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        help="run only these benchmarks (the results file keeps the others' last results)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default benchmarks/results.json; benchmarks/out/results_quick.json with --quick)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--train-steps", type=int, default=None, help="Lightning steps (default: one checkpoint interval)"
    )
    p.add_argument("--segment", type=int, default=None, help="steps per interleaved segment (default 10)")
    p.add_argument("--eval-sizes", type=int, nargs="+", default=None, help="N of the evaluation scaling")
    p.add_argument("--no-dvc", action="store_true", help="skip the DVC cache check (a full smoke repro)")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # keep the table readable
    for name in ("mlflow", "lightning.pytorch", "lightning.fabric", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ROOT / "benchmarks" / ("out/results_quick.json" if args.quick else "results.json")
    results: dict[str, Any] = {"environment": environment(args), "benchmarks": {}, "figures": []}
    figures: list[Figure] = []
    failed = []
    t_all = time.perf_counter()
    for name, (bench, figs) in _jobs(args).items():
        if args.only and name not in args.only:
            continue
        load0 = loadavg()
        print(f"[bench] {name} ... (load {load0})", flush=True)
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        try:
            r = bench()
            f = figs(r)
        except Exception as err:  # one failing benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            r, f = (
                {"error": f"{type(err).__name__}: {err}"},
                [Figure(f"{name} FAILED", None, note=str(err)[:80])],
            )
        r["seconds"] = time.perf_counter() - t0
        r["run"] = {"started": started, "loadavg_start": load0, "loadavg_end": loadavg(), "quick": args.quick}
        results["benchmarks"][name] = r
        figures += f
        print(table(f), flush=True)
        print(f"[bench] {name}: {r['seconds']:.0f}s", flush=True)
    results["environment"] |= {"loadavg_end": loadavg(), "seconds": time.perf_counter() - t_all}
    if args.only and out.is_file():  # a partial run updates its benchmarks and keeps the others' results
        previous = json.loads(out.read_text())
        kept = {k: v for k, v in previous.get("benchmarks", {}).items() if k not in results["benchmarks"]}
        if kept:
            results["benchmarks"] = {
                k: (results["benchmarks"] | kept)[k]
                for k in BENCHMARKS
                if k in results["benchmarks"] or k in kept
            }
            results["environment"]["kept_from_previous_run"] = sorted(kept)  # each with its own "run" entry
            jobs = _jobs(args)
            figures = [
                f
                for k, r in results["benchmarks"].items()
                for f in (jobs[k][1](r) if "error" not in r else [Figure(f"{k} FAILED", None)])
            ]
    results["figures"] = [f.row() for f in figures]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    env = results["environment"]
    print(
        f"\n== diffaudit benchmarks ({'quick' if args.quick else 'full'}; {env['seconds']:.0f}s; "
        f"load {env['loadavg_start']} -> {env['loadavg_end']} on {env['cpus']} CPUs; "
        f"{env['torch_threads']} torch threads) =="
    )
    print(table(figures))
    missed = [f.name for f in figures if f.ok is False]
    print(f"\n{len(missed)} target(s) missed{': ' + ', '.join(missed) if missed else ''}; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
