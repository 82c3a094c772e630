"""Schema of the `explain` config group (explainability audit). Owned by the explainability audit."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ExplainCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
