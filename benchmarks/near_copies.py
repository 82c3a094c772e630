"""Detection and false-alarm rates of the two memorization tests (audit/privacy.py) on planted copies.

    python -m benchmarks.near_copies                     # default config: digits 16x16, pixel and feature
    python -m benchmarks.near_copies --pixel-only --sigmas 0.05 0.1
    python -m benchmarks.near_copies --overrides audit.copy_percentile=5

The config's data, prepared in memory as the prepare stage does (same split and seed). The "generated"
set of each noise level sigma is every training image plus Gaussian noise of std sigma (in [-1, 1] image
space), clamped to [-1, 1] as every sampled image is (`--no-clamp` leaves it unclamped, which is harder:
on background pixels at -1 clamping removes the downward half of the noise). The feature space is the
evaluator's, trained here with the config's evaluator settings and seed, as the evaluator stage trains it.

For each sigma and space: the share flagged by the near-copy (DCR) test and by d1/d2; for the real
held-out images, the leave-one-out false-alarm rate on the test split (which calibrates the threshold)
and the share flagged among the validation split (fresh real images that neither trained nor calibrated).
Writes benchmarks/out/near_copies.json; docs/privacy.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, load_config
from diffaudit.audit.fairness_report import judge
from diffaudit.audit.privacy import privacy_report
from diffaudit.data.prepare import load_raw, stratified_split
from diffaudit.data.store import load_meta, load_split, save_prepared
from diffaudit.training.evaluator_training import train_evaluator


def _rates(report, space: str) -> dict:
    near, mem = report.near_copies[space], report.memorization[space]
    return {
        "near_copy": near.fraction.value,
        "near_copy_ci": near.fraction.ci,
        "d1_d2": mem.fraction,
        "threshold": near.threshold,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2])
    p.add_argument("--pixel-only", action="store_true", help="skip the evaluator (no feature space)")
    p.add_argument("--no-clamp", action="store_true", help="leave noised images unclamped")
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "near_copies.json")
    args = p.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    cfg = load_config(args.overrides)
    t0 = time.perf_counter()
    ds = load_raw(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        save_prepared(
            tmp,
            stratified_split(ds, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed),
            cfg.data.image_size,
        )
        meta = load_meta(tmp)
        train, val, test = (load_split(tmp, s) for s in ("train", "val", "test"))
    evaluator = None
    if not args.pixel_only:
        evaluator, _ = train_evaluator(train, val, meta, cfg.eval.evaluator, cfg.seed, progress=False)

    def spaces(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"pixel": images}
        if evaluator is not None:
            out["feature"] = torch.from_numpy(judge(evaluator, images).feats)
        return out

    ref, held = spaces(train.images), spaces(test.images)
    a = cfg.audit

    def report(gen: torch.Tensor):
        r, _ = privacy_report(spaces(gen), ref, held, a.memorization_ratio, 1, a.copy_percentile, a.ci_level)
        return r

    fresh = report(val.images)
    result: dict = {
        "source": ds.source,
        "n_train": len(train),
        "n_test": len(test),
        "n_val": len(val),
        "percentile": a.copy_percentile,
        "clamped": not args.no_clamp,
        "heldout": {
            s: {
                "leave_one_out": n.heldout.false_alarm.dump(),
                "fresh_val": fresh.near_copies[s].fraction.dump(),
                "fresh_val_d1_d2": fresh.memorization[s].fraction,
                "threshold": n.threshold,
                "rank": n.rank,
            }
            for s, n in fresh.near_copies.items()
        },
        "planted": {},
    }
    # One noise draw for every sigma (seeded by the config), scaled: the levels differ only in sigma.
    noise = torch.randn(train.images.shape, generator=torch.Generator().manual_seed(cfg.seed))
    for sigma in args.sigmas:
        x = train.images + sigma * noise
        r = report(x if args.no_clamp else x.clamp(-1, 1))
        result["planted"][f"{sigma:g}"] = {s: _rates(r, s) for s in r.near_copies}
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{ds.source}: train {len(train)}, test (calibration) {len(test)}, val (fresh) {len(val)}; "
        f"copy_percentile {a.copy_percentile:g} %, noised images "
        + ("unclamped" if args.no_clamp else "clamped")
    )

    def rate(v: dict) -> str:
        return f"{v['n_flagged']}/{v['n']} = {v['value']:.2%} [{v['ci'][0]:.2%}, {v['ci'][1]:.2%}]"

    for s, h in result["heldout"].items():
        print(
            f"  {s:7s} threshold {h['threshold']:.4g} (rank {h['rank']}); false alarm: leave-one-out "
            f"{rate(h['leave_one_out'])}, fresh val {rate(h['fresh_val'])}; "
            f"d1/d2 on val {h['fresh_val_d1_d2']:.2%}"
        )
    for sigma, per in result["planted"].items():
        for s, v in per.items():
            print(
                f"  sigma {sigma:5s} {s:7s} near-copy {v['near_copy']:7.2%} "
                f"[{v['near_copy_ci'][0]:.2%}, {v['near_copy_ci'][1]:.2%}]  d1/d2 {v['d1_d2']:7.2%}"
            )
    print(f"wrote {args.out} ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
