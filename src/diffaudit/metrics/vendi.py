"""The Vendi score (Friedman & Dieng 2023): the effective number of distinct items in a set.

VS = exp(-sum_i l_i log l_i), with l_i the eigenvalues of K / n for a similarity kernel K with K_ii = 1;
here K is the cosine similarity of feature vectors. It is 1 for n copies of one image and n for n
mutually orthogonal ones, so per class it says how many distinct images a class really gets, and a
collapsed class shows as a score far below its real-image floor.
"""

from __future__ import annotations

import torch


def vendi_score(feats: torch.Tensor) -> float:
    """Vendi score of a feature set (N, D) under cosine similarity; NaN for an empty set."""
    if len(feats) == 0:
        return float("nan")
    x = torch.nn.functional.normalize(feats.double().reshape(len(feats), -1), dim=1)
    # The non-zero eigenvalues of X X^T / n equal those of X^T X / n: use the smaller matrix.
    gram = x.T @ x if x.shape[1] < x.shape[0] else x @ x.T
    eig = torch.linalg.eigvalsh(gram / len(x)).clamp_min(0.0)
    eig = eig[eig > 1e-12]
    return float(torch.exp(-(eig * eig.log()).sum()))


def vendi_per_class(feats: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """Vendi score of each class's features (classes with no image left out)."""
    return {
        name: vendi_score(feats[labels == c]) for c, name in enumerate(class_names) if (labels == c).any()
    }
