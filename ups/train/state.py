"""Checkpoint files: the whole training state, a checksum manifest, and weight digests.

A checkpoint directory holds `state.pt` (loadable with `weights_only=True`: tensors, numbers,
strings, lists, dicts) and `manifest.json`, written last, with the sha256 of every file. A
directory whose manifest is missing or disagrees with its files is corrupt (cut off mid-write,
truncated, altered) and is never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE, MANIFEST_FILE, FORMAT = "state.pt", "manifest.json", 1


class CorruptCheckpoint(RuntimeError):
    pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    files = {
        STATE_FILE: {"sha256": _sha256_file(directory / STATE_FILE), "bytes": (directory / STATE_FILE).stat().st_size}
    }
    manifest = {"format": FORMAT, "files": files, **meta}
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / MANIFEST_FILE)


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Return the manifest, or raise CorruptCheckpoint naming what is wrong. A manifest must
    list the state file: an empty or partial list verifies nothing and is refused."""
    return _verified(Path(directory))[0]


def _verified(directory: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest and the state file's bytes, read once and hashed: what `load_checkpoint` loads
    is the very bytes that matched the manifest, not the file opened again afterwards (which may
    have been replaced in between)."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{directory.name}: no {MANIFEST_FILE} (cut off mid-write?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"{directory.name}: {MANIFEST_FILE} is not valid JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or STATE_FILE not in files:
        raise CorruptCheckpoint(f"{directory.name}: {MANIFEST_FILE} does not list {STATE_FILE}")
    # Every file of the checkpoint is in the manifest: nothing unverified sits beside verified
    # state (dotfiles are Ray's own bookkeeping, which the loader never reads).
    extra = sorted(p.name for p in directory.iterdir() if p.name not in files and p.name != MANIFEST_FILE
                   and not p.name.startswith("."))  # fmt: skip
    if extra:
        raise CorruptCheckpoint(f"{directory.name}: {extra[0]} is not in {MANIFEST_FILE}")
    state = b""
    for name, rec in files.items():
        path = directory / name
        if "/" in name or name.startswith(".") or not isinstance(rec, dict) or not {"bytes", "sha256"} <= set(rec):
            raise CorruptCheckpoint(f"{directory.name}: {MANIFEST_FILE} has a malformed entry {name!r}")
        if not path.exists():
            raise CorruptCheckpoint(f"{directory.name}: {name} is missing")
        if path.stat().st_size != rec["bytes"]:
            raise CorruptCheckpoint(
                f"{directory.name}: {name} has {path.stat().st_size} bytes, manifest says {rec['bytes']}"
            )
        if name == STATE_FILE:
            state = path.read_bytes()
            ok = len(state) == rec["bytes"] and hashlib.sha256(state).hexdigest() == rec["sha256"]
        else:
            ok = _sha256_file(path) == rec["sha256"]
        if not ok:
            raise CorruptCheckpoint(f"{directory.name}: {name} does not match its sha256 in the manifest")
    return manifest, state


class OtherStage(Exception):
    """A valid checkpoint of another stage (one worker group trains several stages in turn)."""


def load_checkpoint(directory: str | Path, stage: str | None = None) -> dict[str, Any]:
    """The verified training state; with `stage`, only a checkpoint of that stage."""
    manifest, state = _verified(Path(directory))
    if stage is not None and manifest.get("stage") != stage:
        raise OtherStage(manifest.get("stage"))
    return from_bytes(state)


# -- RNG state, in a form `weights_only` loading accepts ----------------------------------------


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # only a non-MT19937 generator answers with a dict
        raise TypeError("numpy's global RNG is not the legacy MT19937 RandomState")
    kind, keys, pos, has_gauss, cached = np_state
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# -- Digests ------------------------------------------------------------------------------------


def tensors_sha256(tree: Any) -> str:
    """A digest of every tensor in a nested dict, in sorted key order: bit-for-bit weight identity."""
    h = hashlib.sha256()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k in sorted(node):
                walk(f"{prefix}.{k}", node[k])
        elif isinstance(node, torch.Tensor):
            t = node.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    walk("", tree)
    return h.hexdigest()


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
