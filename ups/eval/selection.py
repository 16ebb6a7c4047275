"""Which corrector the reported surrogate uses: a decision taken on val alone.

`eval.corrector: auto` keeps the trained corrector only if its decoded val rollout beats the
bare operator's (the evaluation scores both in one pass); otherwise the surrogate is the operator
alone, and the test split follows the same choice, so it still selects nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class CorrectorChoice:
    kind: str  # the corrector kept ("none": the operator alone)
    scores: dict[str, float]  # val nRMSE with the trained corrector and without ("none")

    @property
    def changed(self) -> bool:
        """True when the evaluation that scored the choice used another corrector than the one kept."""
        return self.kind == "none" and len(self.scores) > 1


def choose_corrector(val: dict[str, Any]) -> CorrectorChoice:
    """From a val evaluation that used a corrector: keep it iff its nRMSE <= the operator's alone."""
    kind = val["corrector"]
    if kind == "none":
        return CorrectorChoice("none", {"none": val["nRMSE"]})
    scores = {kind: val["nRMSE"], "none": val["operator_nRMSE"]}
    return CorrectorChoice(kind if scores[kind] <= scores["none"] else "none", scores)
