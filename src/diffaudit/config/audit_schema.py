"""Schema of the `audit` config group (fairness, privacy, gates). Owned by the fairness/privacy audit."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AuditCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    fail_on_gate: bool = False
