"""The membership-inference section of metrics/privacy.json (audit/membership.py `membership_audit`).

Members are training images, non-members held-out test images, as many of each (docs/privacy.md).
Every score is "higher = more member-like"; each statistic carries its interval and names the interval's
method beside it, and the interval always holds its own estimate (checked here, on every read and write).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from diffaudit.results.base import FieldError, ResultModel
from diffaudit.results.intervals import Estimate

Attack = Literal["loss", "pia"]


class AttackScore(ResultModel):
    """One attack at one timestep, on all members and non-members."""

    auc: Estimate
    tpr_at_1pct_fpr: Estimate
    # Mean of the attack's raw statistic (the loss attack's epsilon-MSE, PIA's l4 distance) per side:
    # lower is more member-like.
    member_mean: float
    nonmember_mean: float


class MembershipHeadline(ResultModel):
    """The strongest attack: the (attack, timestep, direction) of highest AUC on one seeded half of each
    set (`selection_auc`), reported on the other half (n_members, n_nonmembers), so the choice does not
    inflate the number it reports."""

    attack: Attack
    timestep: int
    # True: the attack's statistic read the other way (higher = member), as the selection half chose.
    reversed: bool
    selection: str
    selection_auc: float
    n_members: int
    n_nonmembers: int
    auc: Estimate
    tpr_at_1pct_fpr: Estimate


class MembershipResult(ResultModel):
    n_members: int
    n_nonmembers: int
    member_split: Literal["train"]
    nonmember_split: Literal["test"]
    # Members drawn to the non-members' class counts (class-matched): the label the attacks condition on
    # then says nothing about membership by itself.
    design: str
    prediction_type: str
    num_train_timesteps: int
    noise_draws: int
    bootstrap: int
    ci_level: float
    seed: int
    # Attack ("loss", "pia") -> timestep (as a string) -> its scores.
    attacks: dict[str, dict[str, AttackScore]]
    headline: MembershipHeadline
    seconds: float

    @model_validator(mode="after")
    def _known_attacks(self) -> MembershipResult:
        for name, points in self.attacks.items():
            if name not in ("loss", "pia"):
                raise FieldError(f"attacks.{name}", "not an attack (loss, pia)")
            for t in points:
                if not t.isdigit():
                    raise FieldError(f"attacks.{name}.{t}", "a timestep key must be a whole number")
        return self
