"""Membership inference: can an attacker with the model tell its training images from unseen ones?

Members are training images, non-members held-out test images, as many of each and class-matched (the
same count per class on both sides; the attacks condition on the label, so the label alone says nothing).
Two white-box attacks score every image, higher = more member-like:

- **loss** (Matsumoto et al. 2023, "Membership Inference Attacks against Diffusion Models", IEEE S&P
  Workshops): minus the denoising error at timestep t, ||eps_theta(x_t, t, y) - eps||^2 with x_t =
  sqrt(a_t) x0 + sqrt(1 - a_t) eps for seeded noise eps, averaged over a few noise draws. The network's
  output is converted to epsilon whatever it predicts; at a fixed t the epsilon error is the training
  objective's error times a constant (a_t for v, a_t / (1 - a_t) for x0), so the ranking is the same.
- **PIA** (Kong et al., ICLR 2024, "An Efficient Membership Inference Attack for the Diffusion Model by
  Proximal Initialization"): eps0 = eps_theta(x0, 0, y), x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps0, and
  minus ||eps_theta(x_t, t, y) - eps0||_4 (the paper's l4 distance, its DDPM attack at t = 200 of 1000).
  Deterministic: no noise is drawn.

Each (attack, timestep) gets its ROC AUC and its TPR at 1 % FPR, each with an interval that holds the
estimate: the AUC by a percentile bootstrap resampling members and non-members independently; the TPR by
a distribution-free bound (order statistics of the non-members for the threshold, Clopper-Pearson on the
members at each end), since the percentile bootstrap of a tail threshold under-covers with a few hundred
non-members (docs/privacy.md has the simulation). The headline, the strongest attack, is picked on one
seeded half of each set and reported on the other half; its direction is picked there too (on small
overfit models PIA's distance runs the other way: members farther, AUC far below 0.5).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from scipy.stats import beta, binom

from diffaudit.config.audit_schema import MembershipCfg
from diffaudit.diffusion.parameterization import to_x0_eps
from diffaudit.errors import ConfigError, DataError
from diffaudit.models.unet import predict
from diffaudit.results.intervals import Estimate
from diffaudit.results.membership import AttackScore, MembershipHeadline, MembershipResult
from diffaudit.utils import intervals

FPR = 0.01  # the false-positive rate of `tpr_at_1pct_fpr`
PIA_P = 4  # PIA's l_p distance (Kong et al.: l4)
# AUC: members and non-members resampled independently. TPR at 1 % FPR: distribution-free, order-statistic
# bounds on the non-members' 99 % quantile, Clopper-Pearson on the members at each bound, Bonferroni over
# the four one-sided tails (utils/intervals.py names both).
AUC_METHOD = intervals.PERCENTILE
TPR_METHOD = intervals.ORDER_STATISTIC
SELECTION = (
    "highest AUC over attacks, timesteps and both directions on a seeded half of each set, reported on the "
    "other half"
)
DESIGN = "class-matched: the same count per class on both sides, seeded subsets, at most max_images a side"


# -- metrics on scores (higher = more member-like) ---------------------------------------------------------
def auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """ROC AUC: P(member score > non-member score), ties counted one half (Mann-Whitney U / (n m))."""
    m, n = np.asarray(member, np.float64), np.asarray(nonmember, np.float64)
    s = np.sort(n)
    below = np.searchsorted(s, m, side="left")
    ties = np.searchsorted(s, m, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(m) * len(n)))


def _threshold(nonmember: np.ndarray, fpr: float) -> tuple[float, int]:
    """The score a member must exceed for at most `fpr` of non-members to be called members, and its
    1-based rank among the sorted non-members (the (k+1)-th largest, k = floor(fpr n))."""
    s = np.sort(np.asarray(nonmember, np.float64))
    k = math.floor(fpr * len(s) + 1e-9)
    rank = len(s) - k
    return float(s[rank - 1]), rank


def tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, fpr: float = FPR) -> float:
    """The largest true-positive rate of a threshold whose false-positive rate is at most `fpr` (the ROC
    point at or left of fpr, no interpolation): the share of members above the (k+1)-th largest non-member."""
    tau, _ = _threshold(nonmember, fpr)
    return float((np.asarray(member, np.float64) > tau).mean())


def auc_interval(
    member: np.ndarray, nonmember: np.ndarray, reps: int, level: float, rng: np.random.Generator
) -> Estimate:
    """The AUC with its percentile bootstrap interval, members and non-members resampled independently.

    Vectorised through counts: a resample is a multinomial count per member and per non-member, and each
    member's share of non-members below it is a cumulative sum of the non-member counts."""
    value = auc(member, nonmember)
    if reps <= 0:
        return Estimate(value=value, ci=None, method=None)  # audit.bootstrap is 0
    m = np.asarray(member, np.float64)
    order = np.argsort(np.asarray(nonmember, np.float64), kind="stable")
    s = np.asarray(nonmember, np.float64)[order]
    lo_pos, hi_pos = np.searchsorted(s, m, side="left"), np.searchsorted(s, m, side="right")
    values = np.empty(reps)
    chunk = max(1, 4_000_000 // max(len(m), len(s)))
    for i in range(0, reps, chunk):
        b = min(chunk, reps - i)
        cm = rng.multinomial(len(m), np.full(len(m), 1.0 / len(m)), size=b)
        cn = rng.multinomial(len(s), np.full(len(s), 1.0 / len(s)), size=b)[:, order]
        cum = np.concatenate([np.zeros((b, 1)), np.cumsum(cn, axis=1)], axis=1)
        below, upto = cum[:, lo_pos], cum[:, hi_pos]
        share = (below + 0.5 * (upto - below)) / len(s)
        values[i : i + b] = (cm * share).sum(axis=1) / len(m)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value=value, ci=[float(lo), float(hi)], method=AUC_METHOD)


def tpr_interval(member: np.ndarray, nonmember: np.ndarray, level: float, fpr: float = FPR) -> Estimate:
    """TPR at `fpr` with a distribution-free interval for the TPR at the non-members' true (1 - fpr)
    quantile q (continuous scores).

    With d = (1 - level) / 4: order statistics of the non-members bound q below (tau_lo) and above
    (tau_hi), each with probability 1 - d (binomial in the non-member count); Clopper-Pearson bounds the
    share of members above tau_hi from below and above tau_lo from above, each at 1 - d (the members are
    independent of the thresholds). The four tails sum to 1 - level. Where the non-members are too few to
    bound q from above (fewer than ~log(d)/log(1 - fpr): ~440 at 95 %), tau_hi is +inf and the lower end 0.
    The estimate's threshold lies between the two bounds (they are widened to it if need be), and a
    Clopper-Pearson interval holds its own proportion, so the interval always holds the estimate."""
    m = np.asarray(member, np.float64)
    s = np.sort(np.asarray(nonmember, np.float64))
    n, d = len(s), (1.0 - level) / 4.0
    value = tpr_at_fpr(m, s, fpr)
    _, rank = _threshold(s, fpr)
    j = np.arange(1, n + 1)
    # P(s_(j) <= q) = P(Bin(n, 1 - fpr) >= j); P(s_(j) >= q) = P(Bin(n, 1 - fpr) <= j - 1).
    lower_ok = j[binom.sf(j - 1, n, 1 - fpr) >= 1 - d]
    upper_ok = j[binom.cdf(j - 1, n, 1 - fpr) >= 1 - d]
    j_lo = min(int(lower_ok.max()), rank) if len(lower_ok) else 0
    j_hi = max(int(upper_ok.min()), rank) if len(upper_ok) else n + 1
    above_hi = int((m > s[j_hi - 1]).sum()) if j_hi <= n else 0
    above_lo = int((m > s[j_lo - 1]).sum()) if j_lo >= 1 else len(m)
    low = float(beta.ppf(d, above_hi, len(m) - above_hi + 1)) if above_hi > 0 else 0.0
    high = float(beta.ppf(1 - d, above_lo + 1, len(m) - above_lo)) if above_lo < len(m) else 1.0
    # min/max only guard the beta quantiles' rounding: low <= value <= high holds exactly in theory.
    return Estimate(value=value, ci=[min(low, value), max(high, value)], method=TPR_METHOD)


# -- the two sets ------------------------------------------------------------------------------------------
def select_sets(
    train_labels: torch.Tensor, test_labels: torch.Tensor, max_images: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the members (into train) and non-members (into test): per class, min(train, test)
    images of each side, thinned at random to at most `max_images` a side (class counts kept equal)."""
    rng = np.random.default_rng([seed, 15])
    tr, te = np.asarray(train_labels), np.asarray(test_labels)
    classes = np.union1d(tr, te)
    per_class = {int(c): min(int((tr == c).sum()), int((te == c).sum())) for c in classes}
    slots = np.repeat(list(per_class), list(per_class.values()))
    if len(slots) > max_images:
        slots = rng.choice(slots, size=max_images, replace=False)
    members, nonmembers = [], []
    for c in per_class:
        k = int((slots == c).sum())
        members.append(rng.choice(np.flatnonzero(tr == c), size=k, replace=False))
        nonmembers.append(rng.choice(np.flatnonzero(te == c), size=k, replace=False))
    return np.sort(np.concatenate(members)), np.sort(np.concatenate(nonmembers))


# -- the attacks' statistics (lower = more member-like) ----------------------------------------------------
def _eps(
    unet: UNet2DModel, x_t: torch.Tensor, t: int, labels: torch.Tensor, alpha_bar: torch.Tensor, ptype: str
) -> torch.Tensor:
    tt = torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)
    out = predict(unet, x_t, tt, labels)
    return to_x0_eps(out.float(), x_t, alpha_bar, ptype)[1]


def _noise(shape: tuple[int, ...], seed: int, draw: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 15, draw]).generate_state(1)[0]))
    return torch.randn(shape, generator=gen)


@torch.no_grad()
def denoising_errors(
    unet: UNet2DModel,
    noise_scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    timesteps: Sequence[int],
    noise_draws: int,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """(len(timesteps), n): each image's epsilon mean squared error at each t, averaged over the draws.
    Draw d's noise for the whole set comes from (seed, d), so an image's noise does not depend on the batch
    size, and every timestep sees the same noise (their comparison is paired)."""
    device = next(unet.parameters()).device
    ptype = str(noise_scheduler.config.prediction_type)
    ac = noise_scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    out = torch.zeros(len(timesteps), len(images), dtype=torch.float64)
    for d in range(noise_draws):
        noise = _noise(tuple(images.shape), seed, d)
        for i in range(0, len(images), batch_size):
            x0 = images[i : i + batch_size].to(device, torch.float32)
            eps, y = noise[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
            for k, t in enumerate(timesteps):
                a = ac[t]
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                err = (_eps(unet, x_t, t, y, a, ptype) - eps).double().pow(2).mean(dim=(1, 2, 3))
                out[k, i : i + batch_size] += err.cpu()
    return (out / noise_draws).numpy()


@torch.no_grad()
def pia_distances(
    unet: UNet2DModel,
    noise_scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    timesteps: Sequence[int],
    batch_size: int,
    p: int = PIA_P,
) -> np.ndarray:
    """(len(timesteps), n): PIA's ||eps_theta(x_t, t) - eps0||_p with eps0 = eps_theta(x0, 0) and x_t
    the forward process from x0 along eps0."""
    device = next(unet.parameters()).device
    ptype = str(noise_scheduler.config.prediction_type)
    ac = noise_scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    out = torch.zeros(len(timesteps), len(images), dtype=torch.float64)
    for i in range(0, len(images), batch_size):
        x0, y = images[i : i + batch_size].to(device, torch.float32), labels[i : i + batch_size].to(device)
        eps0 = _eps(unet, x0, 0, y, ac[0], ptype)
        for k, t in enumerate(timesteps):
            a = ac[t]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps0
            diff = (_eps(unet, x_t, t, y, a, ptype) - eps0).double().abs().flatten(1)
            out[k, i : i + batch_size] = diff.pow(p).sum(dim=1).pow(1.0 / p).cpu()
    return out.numpy()


# -- the audit ---------------------------------------------------------------------------------------------
def _score(
    member: np.ndarray, nonmember: np.ndarray, reps: int, level: float, rng: np.random.Generator
) -> tuple[Estimate, Estimate]:
    return auc_interval(member, nonmember, reps, level, rng), tpr_interval(member, nonmember, level)


def membership_audit(
    unet: UNet2DModel,
    noise_scheduler: DDPMScheduler,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    cfg: MembershipCfg,
    *,
    seed: int,
    bootstrap: int,
    ci_level: float,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> MembershipResult:
    """Both attacks at every configured timestep on class-matched members (from `train`, images and
    labels) and non-members (from `test`), and the headline. `unet` (eval mode) and `noise_scheduler` are
    the model and its training schedule (`ClassConditionalPipeline.unet` / `.noise_scheduler`); `encode`
    takes images to the model's space (a latent model's `ClassConditionalPipeline.encode`), where the attacks
    noise and denoise them as training did."""
    t0 = time.perf_counter()
    steps = int(noise_scheduler.config.num_train_timesteps)
    late = [t for t in [*cfg.timesteps, *cfg.pia_timesteps] if t >= steps]
    if late:
        raise ConfigError(
            f"audit.membership timesteps {late} are not below the model's num_train_timesteps={steps}"
        )
    mi, ni = select_sets(train[1], test[1], cfg.max_images, seed)
    if min(len(mi), len(ni)) < 4:
        raise DataError(
            f"membership inference needs at least 4 class-matched members and non-members, got {len(mi)} "
            "(set audit.membership.enabled=false for so few images)"
        )
    images = torch.cat([train[0][mi], test[0][ni]])
    if encode is not None:
        images = encode(images).cpu()
    labels = torch.cat([train[1][mi], test[1][ni]]).long()
    n = len(mi)
    errors = denoising_errors(
        unet, noise_scheduler, images, labels, cfg.timesteps, cfg.noise_draws, seed, cfg.batch_size
    )
    distances = pia_distances(unet, noise_scheduler, images, labels, cfg.pia_timesteps, cfg.batch_size)
    # attack -> timestep -> the statistic of every image (members first); lower = more member-like
    stats = {
        "loss": dict(zip(cfg.timesteps, errors, strict=True)),
        "pia": dict(zip(cfg.pia_timesteps, distances, strict=True)),
    }
    rng = np.random.default_rng([seed, 15, 1])
    attacks: dict[str, dict[str, AttackScore]] = {}
    for name, by_t in stats.items():
        attacks[name] = {}
        for t, stat in by_t.items():
            a, r = _score(-stat[:n], -stat[n:], bootstrap, ci_level, rng)
            attacks[name][str(t)] = AttackScore(
                auc=a,
                tpr_at_1pct_fpr=r,
                member_mean=float(stat[:n].mean()),
                nonmember_mean=float(stat[n:].mean()),
            )
    # The headline: chosen on one half of each set, reported on the other. Each attack is a candidate in
    # both directions: a statistic that runs the other way (AUC well below 0.5) separates the sets too.
    split = np.random.default_rng([seed, 15, 2])
    pm, pn = split.permutation(n), n + split.permutation(n)
    sel_m, sel_n, rep_m, rep_n = pm[: n // 2], pn[: n // 2], pm[n // 2 :], pn[n // 2 :]

    def scores(key: tuple[str, int, bool], idx: np.ndarray) -> np.ndarray:
        name, t, flipped = key
        return (1.0 if flipped else -1.0) * stats[name][t][idx]

    keys = [(name, t, flipped) for flipped in (False, True) for name, by_t in stats.items() for t in by_t]
    chosen = max(keys, key=lambda k: auc(scores(k, sel_m), scores(k, sel_n)))  # the first of equals
    a, r = _score(scores(chosen, rep_m), scores(chosen, rep_n), bootstrap, ci_level, rng)
    headline = MembershipHeadline(
        attack=chosen[0],
        timestep=chosen[1],
        reversed=chosen[2],
        selection=SELECTION,
        selection_auc=auc(scores(chosen, sel_m), scores(chosen, sel_n)),
        n_members=len(rep_m),
        n_nonmembers=len(rep_n),
        auc=a,
        tpr_at_1pct_fpr=r,
    )
    return MembershipResult(
        n_members=n,
        n_nonmembers=n,
        member_split="train",
        nonmember_split="test",
        design=DESIGN,
        prediction_type=str(noise_scheduler.config.prediction_type),
        num_train_timesteps=steps,
        noise_draws=cfg.noise_draws,
        bootstrap=bootstrap,
        ci_level=ci_level,
        seed=seed,
        attacks=attacks,
        headline=headline,
        seconds=time.perf_counter() - t0,
    )
