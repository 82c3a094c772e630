"""Stage prepare: load, validate, split, skew (optional), resize; write tensors and the data card."""

from __future__ import annotations

import torch

from diffaudit.config.schema import Config
from diffaudit.data.prepare import (
    apply_bias,
    cap_per_class,
    data_card,
    load_raw,
    stratified_split,
    validate,
)
from diffaudit.data.store import save_prepared, to_model_tensor
from diffaudit.layout import Layout
from diffaudit.results import DataResult, write_result
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.utils.images import class_grid, save_png
from diffaudit.utils.io import atomic_path
from diffaudit.utils.lineage import path_md5
from pipelines._stage import run


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    out = layout.prepared
    with stage_run(cfg, "prepare"):
        ds = load_raw(cfg.data)
        validate(ds, cfg.data.channels)
        ds = cap_per_class(ds, cfg.data.max_per_class, cfg.seed)
        splits = stratified_split(ds, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
        if cfg.data.bias is not None:
            splits["train"] = apply_bias(splits["train"], cfg.data.bias, cfg.seed)
            validate(splits["train"], cfg.data.channels)
        with atomic_path(out) as tmp:
            save_prepared(tmp, splits, cfg.data.image_size)
        card = {
            "source": ds.source,
            "image_size": cfg.data.image_size,
            "data_md5": path_md5(out),
            "bias": cfg.data.bias.model_dump() if cfg.data.bias else None,
            "duplicates_removed": ds.duplicates_removed,
            "splits": data_card(splits),
        }
        write_result(layout.data_card, DataResult.model_validate(card))
        train = splits["train"]
        real = class_grid(
            to_model_tensor(train.images, cfg.data.image_size),
            torch.from_numpy(train.labels),
            len(train.class_names),
        )
        save_png(real, layout.real_grid)
        log_outputs(
            params={f"data.n_{k}": v["n"] for k, v in card["splits"].items()},  # sizes: params, not charts
            files=[layout.data_card, layout.real_grid],
            tags={"data_md5": card["data_md5"]},
        )
        print(f"[prepare] {ds.source}: " + ", ".join(f"{k}={v['n']}" for k, v in card["splits"].items()))


if __name__ == "__main__":
    run("prepare", main)
