"""Train the evaluator on real training images and measure it on real held-out images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from tqdm.auto import tqdm

from diffaudit.config.schema import EvaluatorCfg
from diffaudit.data.store import DataMeta, Split
from diffaudit.models.evaluator import Evaluator


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translation by up to max_shift pixels: robustness to the small offsets a generator makes."""
    pad = F.pad(x, (max_shift,) * 4, mode="replicate")
    size = x.shape[-1]
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return pad[..., dy : dy + size, dx : dx + size]


def _targets(split: Split, index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"class": split.labels[index]} | {a: v[index] for a, v in split.attributes.items()}


def train_evaluator(
    train: Split, val: Split, meta: DataMeta, cfg: EvaluatorCfg, seed: int, progress: bool = True
) -> tuple[Evaluator, list[dict[str, float]]]:
    """Fit the multi-head classifier; keep the weights of the epoch with the best validation accuracy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Evaluator(
        meta.channels, meta.num_classes, {a: len(g) for a, g in meta.attribute_groups.items()}, cfg.width
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, int(np.ceil(len(train) / cfg.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    best_acc, best_state = -1.0, None
    for epoch in tqdm(range(cfg.epochs), desc="evaluator", disable=not progress):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = _shift(train.images[idx], gen)
            logits = model(x)
            loss = sum(F.cross_entropy(logits[k], t) for k, t in _targets(train, idx).items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = accuracy(model, val)["class"]
        history.append({"epoch": epoch, "train_loss": total / len(train), "val_class_accuracy": acc})
        if acc > best_acc:
            best_acc, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), history


@torch.no_grad()
def predict(model: Evaluator, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Softmax probabilities of every head, batched, in eval mode."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), batch_size):
        for k, v in model(images[i : i + batch_size]).items():
            outs.setdefault(k, []).append(v.softmax(-1))
    return {k: torch.cat(v) for k, v in outs.items()}


def accuracy(model: Evaluator, split: Split) -> dict[str, float]:
    probs = predict(model, split.images)
    targets = _targets(split, torch.arange(len(split)))
    return {k: float((probs[k].argmax(-1) == t).float().mean()) for k, t in targets.items()}


def held_out_report(model: Evaluator, split: Split, meta: DataMeta) -> dict:
    """Accuracy and confusion matrix (rows: true, columns: predicted) of every head on real held-out data."""
    probs = predict(model, split.images)
    targets = _targets(split, torch.arange(len(split)))
    names = {"class": meta.class_names} | meta.attribute_groups
    report = {}
    for k, t in targets.items():
        pred = probs[k].argmax(-1).numpy()
        report[k] = {
            "accuracy": float((pred == t.numpy()).mean()),
            "labels": names[k],
            "confusion": confusion_matrix(t.numpy(), pred, labels=list(range(len(names[k])))).tolist(),
        }
    return report
