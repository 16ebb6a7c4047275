"""Which corrector the reported surrogate uses: a decision taken on val alone.

`eval.corrector: auto` scores every trained corrector and the bare operator on the decoded val
rollout in one pass and keeps the best; a corrector stays only if it is at least as good as the
operator alone. The test split follows the same choice, so it still selects nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from ups.contracts import EvalMetrics
from ups.schema import CorrectorKind


@dataclass
class CorrectorChoice:
    kind: str  # the corrector kept ("none": the operator alone)
    scores: dict[str, float]  # val nRMSE with each trained corrector and without ("none")
    evaluated: str  # the corrector the evaluation that scored them used as its model

    @property
    def changed(self) -> bool:
        """True when the evaluation that scored the choice used another corrector than the one kept."""
        return self.kind != self.evaluated


def choose_corrector(val: EvalMetrics) -> CorrectorChoice:
    """From a val evaluation: the corrector with the lowest nRMSE, if it is <= the operator's alone
    (a tie keeps the corrector); rivals scored beside the model count as candidates too."""
    kind = val.corrector
    if kind == "none" and val.score("operator_nRMSE") is None:
        return CorrectorChoice("none", {"none": val.nRMSE}, "none")
    scores = {"none": val.scores["operator_nRMSE"]}  # scored beside any corrector or rival
    if kind != "none":
        scores[kind] = val.nRMSE
    for k in get_args(CorrectorKind):
        rival = val.score(f"{k}_nRMSE")
        if rival is not None:
            scores[k] = rival
    best = min(scores, key=lambda k: (scores[k], k == "none"))
    return CorrectorChoice(best, scores, kind)
