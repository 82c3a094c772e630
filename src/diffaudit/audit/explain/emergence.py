"""Emergence curves and commitment steps: when does the image become what it ends up as?

The evaluator judges the x0-prediction at every step. The emergence curve of a head (the class or
a sensitive attribute) is its probability of the value it finally assigns to the generated image;
the commitment step is the first step after which its argmax never changes again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffaudit.audit.explain.trajectory import Trajectory
from diffaudit.models.evaluator import Evaluator
from diffaudit.training.evaluator_training import predict


@dataclass
class Emergence:
    """Per head ("class" and each attribute): the evaluator's view of every step of every image."""

    final: dict[str, torch.Tensor]  # head -> (N,) argmax on the generated image
    prob_final: dict[str, torch.Tensor]  # head -> (S, N) probability of that final value on x0 at each step
    argmax: dict[str, torch.Tensor]  # head -> (S, N) argmax on x0 at each step
    commitment: dict[str, torch.Tensor]  # head -> (N,) commitment step in 0..S (S: never settled)

    @property
    def heads(self) -> list[str]:
        return list(self.final)


def commitment_steps(argmax: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """(S, N) step-wise decisions and (N,) final ones -> first step from which every decision is final.

    S when the last step's decision still differs from the final one.
    """
    agree = (argmax == final.unsqueeze(0)).int()
    trailing = agree.flip(0).cumprod(0).sum(0)  # how many of the last steps all agree
    return argmax.shape[0] - trailing


def emergence(evaluator: Evaluator, traj: Trajectory) -> Emergence:
    """Judge x0 at every step and the final image with every head of the evaluator."""
    s, n = traj.x0.shape[:2]
    on_final = predict(evaluator, traj.final)
    on_steps = predict(evaluator, traj.x0.reshape(s * n, *traj.x0.shape[2:]))
    final, prob, arg, commit = {}, {}, {}, {}
    for head, p_final in on_final.items():
        p = on_steps[head].reshape(s, n, -1)
        final[head] = p_final.argmax(-1)
        prob[head] = p.gather(2, final[head].view(1, n, 1).expand(s, n, 1)).squeeze(2)
        arg[head] = p.argmax(-1)
        commit[head] = commitment_steps(arg[head], final[head])
    return Emergence(final, prob, arg, commit)


def band_curves(
    em: Emergence, labels: torch.Tensor, band: tuple[float, float]
) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """head -> conditioning class -> {"mean", "lo", "hi"} curves over steps (quantile band)."""
    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for head, prob in em.prob_final.items():
        out[head] = {}
        for c in sorted(labels.unique().tolist()):
            p = prob[:, labels == c].double().numpy()
            out[head][int(c)] = {
                "mean": p.mean(1),
                "lo": np.quantile(p, band[0], axis=1),
                "hi": np.quantile(p, band[1], axis=1),
            }
    return out


def _stats(steps: torch.Tensor, num_steps: int) -> dict[str, float]:
    x = steps.double()
    return {
        "mean": float(x.mean()),
        "median": float(x.median()),
        "std": float(x.std()) if len(x) > 1 else 0.0,
        "mean_fraction": float(x.mean() / num_steps),
        "never_settled": float((steps >= num_steps).double().mean()),
    }


def commitment_summary(em: Emergence, labels: torch.Tensor, num_steps: int) -> dict:
    """Commitment statistics per head (overall and per conditioning class), and attribute-vs-class order."""
    out: dict = {}
    for head, steps in em.commitment.items():
        per_class = {
            str(int(c)): _stats(steps[labels == c], num_steps) for c in sorted(labels.unique().tolist())
        }
        out[head] = _stats(steps, num_steps) | {"per_class": per_class}
    order = {}
    for head in em.heads:
        if head == "class":
            continue
        a, c = em.commitment[head], em.commitment["class"]
        order[head] = {
            "share_attribute_first": float((a < c).double().mean()),
            "share_same_step": float((a == c).double().mean()),
            "share_class_first": float((a > c).double().mean()),
            "mean_step_difference": float((a - c).double().mean()),  # < 0: the attribute settles earlier
        }
    return {"per_head": out, "attribute_vs_class": order}


def emergence_summary(em: Emergence, labels: torch.Tensor | None) -> dict:
    """Mean probability of the final value over all steps (area under the curve, 1 = known from the start),
    and how often the final class is the conditioning one (None: unconditional, `labels` None)."""
    matches = None if labels is None else float((em.final["class"] == labels).double().mean())
    return {
        "area_under_curve": {h: float(p.double().mean()) for h, p in em.prob_final.items()},
        "final_matches_condition": matches,
    }
