"""Raw weights against EMA weights along one training run: FID, conditional accuracy and thickness shares.

    python -m benchmarks.ema_study                         # the default config, 1000 steps (~9 min here)
    python -m benchmarks.ema_study --at 400 600 1000 --decays 0.98 0.995 --per-class 60
    python -m benchmarks.ema_study --overrides train.max_steps=600 --at 600

One `train_diffusion` run of the config (conf/ + overrides, `train.ema_decay` forced to 0 so the module
exports raw weights) on the prepared data in data/prepared (run `dvc repro prepare evaluator` first). A
callback keeps one diffusers EMA per decay beside it and snapshots raw and EMA weights at the `--at` steps.
Each snapshot samples the same seeds with the config's sampler and is scored with the project's own
evaluator (FID against the real test split in its feature space, conditional accuracy) and thickness rule.
Writes benchmarks/out/ema_study.json and prints one row per (step, weights). docs/metrics.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from lightning.pytorch.callbacks import Callback

from benchmarks.common import ROOT, load_config
from diffaudit.audit.attribute_rules import fit_rules
from diffaudit.audit.fairness_report import judge
from diffaudit.data.store import load_meta, load_split
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import sample_seeds
from diffaudit.diffusion.schedulers import build_noise_scheduler
from diffaudit.layout import Layout
from diffaudit.metrics.fid import fid_features
from diffaudit.models.evaluator import Evaluator
from diffaudit.training.diffusion_training import train_diffusion


class Snapshots(Callback):
    """EMA copies at several decays beside the trained weights, and state dicts of all at chosen steps."""

    def __init__(self, decays: list[float], at: set[int]) -> None:
        self.decays, self.at, self.saved = decays, at, {}

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self.emas = {d: EMAModel(module.unet.parameters(), decay=d, foreach=True) for d in self.decays}

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        for ema in self.emas.values():
            ema.step(module.unet.parameters())
        if trainer.global_step in self.at:
            raw = {k: v.detach().clone() for k, v in module.unet.state_dict().items()}
            names = [n for n, _ in module.unet.named_parameters()]
            snap = {"raw": raw}
            for d, ema in self.emas.items():
                snap[f"ema{d:g}"] = raw | {
                    n: p.detach().clone() for n, p in zip(names, ema.shadow_params, strict=True)
                }
            self.saved[trainer.global_step] = snap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--decays", nargs="+", type=float, default=[0.98, 0.995])
    p.add_argument("--at", nargs="+", type=int, default=[600, 1000], help="training steps to snapshot")
    p.add_argument("--per-class", type=int, default=60)
    layout = Layout.of(load_config())
    p.add_argument("--data", type=Path, default=ROOT / layout.prepared)
    p.add_argument("--evaluator", type=Path, default=ROOT / layout.evaluator)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ema_study.json")
    args = p.parse_args(argv)
    cfg = load_config([*args.overrides, "train.ema_decay=0.0"])
    meta = load_meta(args.data)
    train, val, test = (load_split(args.data, s) for s in ("train", "val", "test"))
    snaps = Snapshots(args.decays, set(args.at))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        module, _ = train_diffusion(
            cfg, train, val, meta, Path(tmp) / "checkpoints", progress=True, extra_callbacks=[snaps]
        )
    train_s = time.perf_counter() - t0
    pipe = ClassConditionalPipeline.from_unet(
        module.unet.eval(), build_noise_scheduler(cfg.diffusion), cfg.sampler.name
    )
    evaluator = Evaluator.from_pretrained(args.evaluator, use_safetensors=True)
    rule = fit_rules(meta, [train, val]).get("thickness")
    real = torch.from_numpy(judge(evaluator, test.images).feats)
    labels = torch.arange(meta.num_classes).repeat_interleave(args.per_class)
    seeds = sample_seeds(cfg.seed + 1, len(labels))
    rows = []
    for step in sorted(snaps.saved):
        for weights, state in snaps.saved[step].items():
            pipe.unet.load_state_dict(state)
            x = pipe.sample_as_configured(cfg.sampler, labels=labels, seeds=seeds).images
            j = judge(evaluator, x)
            row: dict[str, Any] = {
                "step": step,
                "weights": weights,
                "fid_evaluator": fid_features(real, torch.from_numpy(j.feats)),
                "conditional_accuracy": float((j.preds["class"] == labels.numpy()).mean()),
            }
            if rule is not None:
                thick = rule.predict(x, labels)
                per_class = [thick[(labels == c).numpy()].mean() for c in range(meta.num_classes)]
                row |= {
                    "thick_share": float(thick.mean()),
                    "max_abs_class_share_minus_half": float(np.max(np.abs(np.asarray(per_class) - 0.5))),
                }
            rows.append(row)
            print(
                json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "overrides": args.overrides,
                "train_seconds": train_s,
                "per_class": args.per_class,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
