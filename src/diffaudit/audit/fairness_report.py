"""Assemble metrics/fairness.json (typed: results.fairness.FairnessReport) from the evaluator's view of
one generated set: representation of the class and of every attribute, bias amplification per
attribute, and per-group quality.

The evaluator is run once per image set (`judge`); everything else works on its outputs, so the audit
of the mitigated set reuses the same code and the same held-out reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.audit.bias import bias_amplification
from diffaudit.audit.fairness import (
    confusion_counts,
    distribution,
    pooled_shares,
    representation,
    row_normalise,
    stratified_shares,
)
from diffaudit.audit.per_group import per_group_quality
from diffaudit.config.audit_schema import AuditCfg
from diffaudit.data.store import DataMeta, Split
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.fairness import FairnessReport

# Judged key under which an attribute read by its pixel rule (audit/attribute_rules.py) keeps the head's
# reads.
EVALUATOR_SUFFIX = ":evaluator"


@dataclass
class Judged:
    """The evaluator's outputs on one image set: softmax per head, argmax per head, features."""

    probs: dict[str, np.ndarray]
    preds: dict[str, np.ndarray]
    feats: np.ndarray

    def __len__(self) -> int:
        return len(self.feats)


@torch.no_grad()
def judge(evaluator: Evaluator, images: torch.Tensor, batch_size: int = 512) -> Judged:
    """One batched pass: features and every head's probabilities."""
    evaluator.eval()
    feats, probs = [], {}
    for i in range(0, len(images), batch_size):
        f = evaluator.features(images[i : i + batch_size])
        feats.append(f.double())
        for k, v in evaluator.heads(f).items():
            probs.setdefault(k, []).append(v.softmax(-1).double())
    p = {k: torch.cat(v).numpy() for k, v in probs.items()}
    return Judged(probs=p, preds={k: v.argmax(-1) for k, v in p.items()}, feats=torch.cat(feats).numpy())


def _reference(kind: str, train_labels: np.ndarray, k: int) -> np.ndarray:
    return np.full(k, 1.0 / k) if kind == "uniform" else distribution(train_labels, k)


def fairness_report(
    cfg: AuditCfg,
    meta: DataMeta,
    train: Split,
    test: Split,
    test_j: Judged,
    gen_labels: torch.Tensor,
    gen_j: Judged,
    seed: int,
) -> FairnessReport:
    """Representation, bias amplification and per-group quality of one generated set."""
    rng = np.random.default_rng(seed)
    b, lvl = cfg.bootstrap, cfg.ci_level
    heads = {"class": meta.class_names} | meta.attribute_groups
    truth = {"class": test.labels.numpy()} | {a: v.numpy() for a, v in test.attributes.items()}
    train_truth = {"class": train.labels.numpy()} | {a: v.numpy() for a, v in train.attributes.items()}
    gen_lab = gen_labels.numpy()
    out: dict = {
        "n_generated": len(gen_j),
        "reference": cfg.reference,
        "corrected": cfg.correct_errors,
        "ci_level": lvl,
        "bootstrap": b,
        "evaluator_test_accuracy": {},
        "representation": {},
        "bias_amplification": {},
        "per_group": {},
    }
    for head, names in heads.items():
        conf = confusion_counts(truth[head], test_j.preds[head], len(names))
        # The head's own accuracy, also where a pixel rule reads the attribute (attribute_measure has the
        # rule's).
        head_pred = test_j.preds.get(head + EVALUATOR_SUFFIX, test_j.preds[head])
        out["evaluator_test_accuracy"][head] = float((head_pred == truth[head]).mean())
        refs = {kind: _reference(kind, train_truth[head], len(names)) for kind in ("uniform", "train")}
        reps = {}
        for kind, ref in refs.items():
            if head == "class":
                shares = pooled_shares(gen_j.preds[head], conf, ref, b, rng)
            else:
                shares, per_class = stratified_shares(
                    gen_j.preds[head],
                    gen_lab,
                    truth[head],
                    test_j.preds[head],
                    truth["class"],
                    ref,
                    cfg.min_confusion_count,
                    b,
                    rng,
                    prior=cfg.confusion_prior,
                )
                if kind == cfg.reference:
                    out["bias_amplification"][head] = bias_amplification(
                        per_class,
                        train_truth["class"],
                        train_truth[head],
                        meta.class_names,
                        names,
                        correct_errors=cfg.correct_errors,
                        level=lvl,
                    )
            reps[kind] = representation(shares, ref, names, lvl)
        rep = reps[cfg.reference]
        other = "train" if cfg.reference == "uniform" else "uniform"
        rep["other_reference"] = {"reference": other} | {
            key: reps[other][key] for key in ("p_ref", "p_gen_corrected", "raw", "corrected")
        }
        rep["confusion_test"] = conf.astype(int).tolist()
        # Large: the evaluator barely separates the groups, and the correction amplifies noise accordingly.
        rep["confusion_condition"] = float(np.linalg.cond(row_normalise(conf)))
        out["representation"][head] = rep
    hit = (gen_j.preds["class"] == gen_lab).astype(np.float64)
    confidence = gen_j.probs["class"][np.arange(len(gen_lab)), gen_lab]
    common = dict(
        hit=hit,
        confidence=confidence,
        gen_feats=gen_j.feats,
        real_feats=test_j.feats,
        k=cfg.pr_k,
        min_group_size=cfg.min_group_size,
        min_group_size_fid=cfg.min_group_size_fid,
        n_boot=b,
        level=lvl,
    )
    for attr, names in meta.attribute_groups.items():
        out["per_group"][attr] = per_group_quality(
            np.asarray(names)[gen_j.preds[attr]],
            real_groups=np.asarray(names)[truth[attr]],
            rng=rng,
            **common,
        )
    # The class as the group: membership is exact (the conditioning label), not the evaluator's guess.
    out["per_group"]["class"] = per_group_quality(
        np.asarray(meta.class_names)[gen_lab],
        real_groups=np.asarray(meta.class_names)[truth["class"]],
        rng=rng,
        **common,
    )
    out["attribute_measure"] = _measures(meta, truth, test_j, gen_j)
    out["headline"] = headline(out, cfg)
    return FairnessReport.model_validate(out)


def _measures(meta: DataMeta, truth: dict[str, np.ndarray], test_j: Judged, gen_j: Judged) -> dict:
    """How each attribute was read. Where a pixel rule replaced the evaluator's head (the head's reads are
    under `<attribute>:evaluator`), what the head would have said: its accuracy on real test images, its
    share of each group among the generated ones, and how often it agrees with the rule there."""
    out = {}
    for attr, names in meta.attribute_groups.items():
        head = gen_j.preds.get(attr + EVALUATOR_SUFFIX)
        if head is None:
            out[attr] = {"measured_by": "evaluator"}
            continue
        k = len(names)
        out[attr] = {
            "measured_by": "definition",
            "definition_test_accuracy": float((test_j.preds[attr] == truth[attr]).mean()),
            "evaluator_test_accuracy": float((test_j.preds[attr + EVALUATOR_SUFFIX] == truth[attr]).mean()),
            "generated_shares_definition": dict(
                zip(names, distribution(gen_j.preds[attr], k).tolist(), strict=True)
            ),
            "generated_shares_evaluator": dict(zip(names, distribution(head, k).tolist(), strict=True)),
            "agreement_on_generated": float((head == gen_j.preds[attr]).mean()),
        }
    return out


def pick(stat: dict, which: str) -> float:
    """The gated number of a {value, ci} statistic: the estimate or one end of its interval."""
    if which == "estimate":
        return float(stat["value"])
    if stat["ci"] is None:  # no interval: an end of it was not measured
        return float("nan")
    return float(stat["ci"][0 if which == "ci_low" else 1])


def pick_abs(stat: dict, which: str) -> float:
    """The gated number of a signed {value, ci} statistic x, read from |x|: |estimate|, or an end of the
    interval of |x| for x in ci (its low end is 0 where ci holds 0)."""
    if which == "estimate":
        return abs(float(stat["value"]))
    if stat["ci"] is None:
        return float("nan")
    lo, hi = (float(x) for x in stat["ci"])
    if np.isnan(lo) or np.isnan(hi):
        return float("nan")
    if which == "ci_high":
        return max(abs(lo), abs(hi))
    return 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))


def headline(report: dict, cfg: AuditCfg) -> dict:
    """The worst figure of each kind, and where it was found (what the gates read). Bias amplification is
    the measure `cfg.gates.bias_amplification_measure` names; the signed ones are read by |x|."""
    est = "corrected" if cfg.correct_errors else "raw"
    fd = [
        (pick(r[est]["fd_l2"], cfg.gate_statistic), h, r[est]["fd_l2"])
        for h, r in report["representation"].items()
    ]
    measure = cfg.gates.bias_amplification_measure
    ba_key, read = ("max_abs_ba", pick) if measure == "worst_cell" else (measure, pick_abs)
    ba = [
        (read(r[ba_key], cfg.gate_statistic), a, r[ba_key]) for a, r in report["bias_amplification"].items()
    ]
    gap = [
        (pick(r["gap"]["conditional_accuracy"], cfg.gate_statistic), a, r["gap"]["conditional_accuracy"])
        for a, r in report["per_group"].items()
        if a != "class" and r.get("gap")
    ]
    out: dict = {"estimate": est, "statistic": cfg.gate_statistic}
    for key, rows in (("fairness_discrepancy", fd), ("bias_amplification", ba), ("worst_group_gap", gap)):
        rows = [r for r in rows if not np.isnan(r[0])]
        if rows:
            v, where, stat = max(rows, key=lambda r: r[0])
            out[key] = {"value": v, "where": where, "estimate": stat["value"], "ci": stat["ci"]}
        else:
            out[key] = {"value": float("nan"), "where": None}
    ba_head = out["bias_amplification"]
    ba_head["measure"] = measure
    if measure != "worst_cell" and ba_head.get("ci") is not None:
        # A signed measure is gated on |x|: `ci` is the interval of |x| (it holds `value`), the signed
        # interval stays beside the signed `estimate`.
        lo, hi = ba_head["ci"]
        ba_head["signed_ci"] = [lo, hi]
        ba_head["ci"] = [0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi))]
    return out
