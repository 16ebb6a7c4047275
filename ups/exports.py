"""A stage's export: the hand-off to later stages, evaluation, the latent cache and the registry.

`stages/<stage>/export.pt` holds the best-epoch (EMA) tensors, the stage's best metric and the
config digest, saved with `torch.save` and loaded with `weights_only=True`. Whoever reads an
export passes the `weights_sha256` recorded for it (summary.json, the stage's result.json, the
registry's champion.json); a file whose tensors do not hash to it is refused, so an altered or
swapped export is never used silently.
"""

from __future__ import annotations

from typing import Any

from ups.contracts import BestMetric
from ups.storage import Storage
from ups.train.state import from_bytes, tensors_sha256, to_bytes

EXPORT_FILE = "export.pt"

Exports = dict[str, dict[str, Any]]  # stage name -> its export's tensors (what `read_export` returns)


class ExportMismatch(RuntimeError):
    """An export whose tensors do not match the digest recorded for it."""


def write_export(uri: str, stage: str, tensors: dict[str, Any], best: BestMetric, config_digest: str) -> str:
    """Write the export; returns the weights digest to record for it."""
    sha = tensors_sha256(tensors)
    blob = {
        "stage": stage,
        "tensors": tensors,
        "best": best.to_dict(),
        "config_digest": config_digest,
        "weights_sha256": sha,
    }
    Storage(uri).write_bytes(to_bytes(blob))
    return sha


def read_export(uri: str, expect_sha256: str | None) -> dict[str, Any]:
    """The export's tensors, verified against the recorded digest (None: not verified, say why
    at the call site)."""
    return verify_export(Storage(uri).read_bytes(), expect_sha256, uri)


def verify_export(data: bytes, expect_sha256: str | None, uri: str) -> dict[str, Any]:
    """The tensors of an export's bytes, checked against the recorded digest: whoever verifies and
    then uses (or copies) an export does both with these same bytes."""
    tensors = from_bytes(data)["tensors"]
    if expect_sha256 is not None:
        got = tensors_sha256(tensors)
        if got != expect_sha256:
            raise ExportMismatch(f"{uri}: weights digest {got[:12]}… does not match the recorded {expect_sha256[:12]}…")
    return tensors
