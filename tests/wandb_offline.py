"""Read W&B's offline `.wandb` files, so tests can check what a user would sync.

The file is a LevelDB-style log (W&B's `datastore`: a 7-byte header ":W&B" + magic + version,
then 32 KiB blocks of records with a 7-byte header each: crc32, length, type FULL/FIRST/MIDDLE/
LAST) of protobuf `Record`s. wandb >= 0.2x reads it in Go only, so this small reader is ours.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768


def records(path: Path):
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path}: not a W&B offline file"
    pos, buf = 7, b""
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield data
        elif kind == 2:
            buf = data
        elif kind == 3:
            buf += data
        elif kind == 4:
            yield buf + data


@dataclass
class OfflineRun:
    folder: Path
    run_id: str = ""
    steps: list[int] = field(default_factory=list)
    history_keys: set[str] = field(default_factory=set)
    summary: dict[str, object] = field(default_factory=dict)


def read(folder: Path) -> OfflineRun:
    (file,) = folder.glob("*.wandb")
    out = OfflineRun(folder)
    for data in records(file):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.run_id = rec.run.run_id
        elif kind == "history":
            out.steps.append(rec.history.step.num)
            out.history_keys |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
        elif kind == "summary":
            for i in rec.summary.update:
                out.summary[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out


def runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline segment of a pipeline run, oldest first."""
    return [read(f) for f in sorted((run_dir / "wandb").glob("offline-run-*"))]
