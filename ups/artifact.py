"""Where a trained surrogate lives, and the self-contained artifact that carries it elsewhere.

Three sources hold one, each read here into a `Bundle` (config, data metadata, verified weights):

- a run folder `{storage}/{name}`: summary.json's stage records name each export's weights digest;
  exports are read from the folder itself (`stages/<stage>/export.pt`), so a moved or copied run
  loads, and nothing outside it is followed;
- a registry family `{storage}/registry/{family}`: champion.json names a `champion-*` slot in the
  family folder (a run folder in small) and the digests its weights must have;
- an artifact folder written by `write_artifact` (`python -m ray_jobs.export`):

      artifact.json      format, file digests, stages, corrector, metrics, provenance
      model.safetensors  every tensor the surrogate uses, named `<stage>/<key>[/<param>]`
      config.yaml        the run's resolved config
      meta.json          grid, Δt, lengths, normalisers, frames: what the model needs of the data
      README.md          the model card

Loading reads each file's bytes once, hashes those bytes and parses the same bytes, so what is
verified is what is used. A missing, unfinished or altered source is a `LoadError` (one line).
Safetensors holds tensors only, so an artifact cannot carry code.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from ups.config import Config, ConfigError, YamlLoader, digest, to_yaml, validate
from ups.contracts import ChampionRecord, RunSummary
from ups.data import views
from ups.data.views import DataMeta
from ups.eval.evaluate import corrector_stages
from ups.exports import EXPORT_FILE, Exports
from ups.stages import registry
from ups.storage import Storage, redact
from ups.train.state import from_bytes, tensors_sha256

ARTIFACT_FILE, WEIGHTS_FILE, META_FILE, CONFIG_FILE, CARD_FILE = (
    "artifact.json", "model.safetensors", "meta.json", "config.yaml", "README.md",
)  # fmt: skip
FORMAT = 1
METRIC_KEYS = ("nRMSE", "operator_nRMSE", "persistence_nRMSE", "recon_nRMSE", "one_step_nRMSE", "fno_nRMSE",
               "diffusion_nRMSE", "consistency_nRMSE", "RMSE", "cRMSE", "bRMSE")  # fmt: skip


class LoadError(ConfigError):
    """A surrogate source that cannot be used as it is; the message is one line naming it."""


@dataclass
class Bundle:
    """Everything a `Surrogate` is built from, verified."""

    cfg: Config  # eval.corrector is the corrector to apply (the run's choice on val)
    meta: DataMeta
    exports: Exports  # stage -> tensors, only the stages the surrogate uses
    source: str
    kind: str  # run | champion | artifact
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    digests: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # run name, wall time, stages (the card's facts)


def load_bundle(source: str) -> Bundle:
    """The bundle from a run folder, a registry family or an artifact folder (see the module doc)."""
    shown = redact(source)
    try:
        where = Storage(source)
        if where.exists(ARTIFACT_FILE):
            return _from_artifact(where, shown)
        if where.exists("champion.json"):
            return _from_champion(where, shown)
        if where.exists("summary.json"):
            return _from_run(where, shown, "run", None)
    except LoadError:
        raise
    except ConfigError as e:  # a damaged record (RunSummary, ChampionRecord): its line names the file
        raise LoadError(str(e)) from None
    except ValueError as e:  # a path that escapes, a bad URI
        raise LoadError(f"{shown}: {e}") from None
    except OSError as e:
        raise LoadError(f"{shown}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    raise LoadError(f"{shown}: not a run folder, a registry family or an artifact "
                    f"(no summary.json, champion.json or {ARTIFACT_FILE})")  # fmt: skip


# --- reading -------------------------------------------------------------------------------------


def _json(where: Storage, shown: str, *parts: str) -> Any:
    name = "/".join(parts)
    try:
        return json.loads(where.read_bytes(*parts).decode("utf-8"))
    except FileNotFoundError:
        raise LoadError(f"{shown}/{name}: missing") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise LoadError(f"{shown}/{name}: corrupt, not JSON") from None


def _config(data: bytes, shown: str) -> Config:
    try:
        tree = yaml.load(data.decode("utf-8"), Loader=YamlLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        raise LoadError(f"{shown}: corrupt, not YAML") from None
    if not isinstance(tree, dict):
        raise LoadError(f"{shown}: corrupt, not a mapping of keys")
    return validate(tree, default_source=shown, stored=True)


def _with_corrector(cfg: Config, chosen: Any, shown: str) -> Config:
    """The config with `eval.corrector` set to what the run selected on val (when it was `auto`)."""
    if chosen not in (None, "none", *corrector_stages()):
        raise LoadError(f"{shown}: eval.corrector {chosen!r} is not a corrector")
    if cfg.eval.corrector == "auto" and chosen:
        return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"corrector": chosen})})
    return cfg


def _needed(cfg: Config, completed: set[str]) -> list[str]:
    """The stages whose exports the surrogate uses: the codec, the operator, the chosen corrector."""
    stages = corrector_stages()
    if cfg.eval.corrector == "auto":  # a run that never evaluated: the latest trained corrector, as evaluation picks
        extra = next((s for s in stages.values() if s in completed), None)
    else:
        extra = {str(k): v for k, v in stages.items()}.get(cfg.eval.corrector)  # "none" has no stage
    return [*registry.surrogate_stages(), *([extra] if extra else [])]


def _metrics(summary: RunSummary) -> dict[str, dict[str, float]]:
    out = {}
    for split, ev in (("val", summary.eval), ("test", summary.eval_test)):
        if ev is not None:
            out[split] = {k: ev.scores[k] for k in METRIC_KEYS if k in ev.scores}
    return out


def _from_run(where: Storage, shown: str, kind: str, digests: dict[str, Any] | None) -> Bundle:
    """A run folder (`stages/<stage>/export.pt`), or a champion slot (`<stage>/export.pt`, with the
    digests champion.json holds: `digests`)."""
    summary = RunSummary.read(where)
    completed = {n for n, r in summary.stages.items() if r.completed}
    cfg = _with_corrector(_config(_read(where, shown, CONFIG_FILE), f"{shown}/{CONFIG_FILE}"), summary.corrector, shown)
    exports: Exports = {}
    weights = {}
    for stage in _needed(cfg, completed):
        if stage not in completed:
            raise LoadError(f"{shown}: stage {stage} has not completed; there is no trained surrogate to load")
        expected = (digests if digests is not None else {stage: summary.stages[stage].weights_sha256}).get(stage)
        if not expected:
            raise LoadError(f"{shown}: stage {stage} has no recorded weights digest; refusing to load it unverified")
        parts = (*(("stages",) if digests is None else ()), stage, EXPORT_FILE)
        blob, rel = _read(where, shown, *parts), "/".join(parts)
        try:
            tensors = from_bytes(blob)["tensors"]
        except Exception as e:  # weights_only=True refuses anything but tensors and plain data
            raise LoadError(f"{shown}/{rel}: cannot be read ({type(e).__name__})") from None
        if tensors_sha256(tensors) != expected:
            raise LoadError(f"{shown}/{rel}: weights do not match the recorded digest "
                            f"{expected[:12]}… (altered or swapped)")  # fmt: skip
        exports[stage], weights[stage] = tensors, expected
    meta = _run_meta(where, shown, cfg, summary)
    return Bundle(
        cfg=cfg, meta=meta, exports=exports, source=shown, kind=kind, metrics=_metrics(summary),
        digests={"config": summary.config_digest or digest(cfg), "data": summary.data_sha256, "weights": weights},
        provenance={"run": summary.name, "stages": {n: r.to_dict() for n, r in summary.stages.items()},
                    "trained_with": summary.command, "data_paths": [redact(p) for p in cfg.data.paths]},
    )  # fmt: skip


def _run_meta(where: Storage, shown: str, cfg: Config, summary: RunSummary) -> DataMeta:
    """The data's metadata as the run recorded it (meta.json, verified by its digest in summary.json);
    a run from before meta.json rebuilds it from its data files, checked against the data digest."""
    if where.exists(META_FILE):
        data = _read(where, shown, META_FILE)
        want = summary.meta_sha256
        if want and hashlib.sha256(data).hexdigest() != want:
            raise LoadError(f"{shown}/{META_FILE}: does not match the digest in summary.json (altered)")
        return _meta(data, f"{shown}/{META_FILE}")
    try:
        tasks = views.load_tasks(cfg.data)
    except (ConfigError, OSError, ValueError) as e:
        raise LoadError(f"{shown}: no {META_FILE} (an older run) and its data cannot be read: {e}") from None
    if summary.data_sha256 and views.data_digest(tasks) != summary.data_sha256:
        raise LoadError(f"{shown}: no {META_FILE} (an older run), and its data files changed since it trained")
    return views.DataMeta.from_tasks(tasks, cfg.data.initial_step)


def _meta(data: bytes, shown: str) -> DataMeta:
    try:
        return DataMeta.from_dict(json.loads(data.decode("utf-8")))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
        raise LoadError(f"{shown}: corrupt data metadata") from None


def _read(where: Storage, shown: str, *parts: str) -> bytes:
    try:
        return where.read_bytes(*parts)
    except (FileNotFoundError, IsADirectoryError):
        raise LoadError(f"{shown}/{'/'.join(parts)}: missing") from None


def _from_champion(family: Storage, shown: str) -> Bundle:
    champ = ChampionRecord.read(family)
    if champ is None or not champ.checkpoint or not champ.weights_sha256:
        raise LoadError(f"{shown}/champion.json: no champion slot or weights digests")
    slot = posixpath.basename(champ.checkpoint.partition("?")[0].rstrip("/"))
    if not slot.startswith("champion-") or family.uri_of(slot).partition("?")[0] != champ.checkpoint.partition("?")[0]:
        raise LoadError(f"{shown}/champion.json: the champion's slot is not a champion-* folder of this family")
    bundle = _from_run(family.sub(slot), f"{shown}/{slot}", "champion", dict(champ.weights_sha256))
    bundle.source = shown
    return bundle


def _from_artifact(where: Storage, shown: str) -> Bundle:
    record = _json(where, shown, ARTIFACT_FILE)
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        raise LoadError(f"{shown}/{ARTIFACT_FILE}: not an artifact of format {FORMAT}")
    files: dict[str, bytes] = {}
    for name in (WEIGHTS_FILE, CONFIG_FILE, META_FILE):
        want = record["files"].get(name)
        data = _read(where, shown, name)
        if not isinstance(want, str) or hashlib.sha256(data).hexdigest() != want:
            raise LoadError(f"{shown}/{name}: does not match the digest in {ARTIFACT_FILE} (altered or replaced)")
        files[name] = data
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        flat = load_safetensors(files[WEIGHTS_FILE])
    except (SafetensorError, ValueError) as e:
        raise LoadError(f"{shown}/{WEIGHTS_FILE}: cannot be read ({e})") from None
    exports = unflatten(flat)
    weights = record.get("digests", {}).get("weights", {})
    for stage, tensors in exports.items():
        if tensors_sha256(tensors) != weights.get(stage):
            raise LoadError(f"{shown}/{WEIGHTS_FILE}: stage {stage}'s weights do not match their recorded digest")
    cfg = _config(files[CONFIG_FILE], f"{shown}/{CONFIG_FILE}")
    missing = [s for s in _needed(cfg, set(exports)) if s not in exports]
    if missing:
        raise LoadError(f"{shown}/{WEIGHTS_FILE}: holds no weights for stage {missing[0]}")
    return Bundle(cfg=cfg, meta=_meta(files[META_FILE], f"{shown}/{META_FILE}"), exports=exports, source=shown,
                  kind="artifact", metrics=record.get("metrics", {}), digests=record.get("digests", {}),
                  provenance=record.get("provenance", {}))  # fmt: skip


# --- writing -------------------------------------------------------------------------------------


def flatten(exports: Exports) -> dict[str, torch.Tensor]:
    """Stage exports as safetensors wants them: one name per tensor, `<stage>/<key>[/<param>]`."""
    flat = {}
    for stage, tensors in exports.items():
        for key, value in tensors.items():
            if isinstance(value, torch.Tensor):
                flat[f"{stage}/{key}"] = value.detach().cpu().contiguous()
            elif isinstance(value, dict):
                for param, t in value.items():
                    flat[f"{stage}/{key}/{param}"] = t.detach().cpu().contiguous().clone()
            else:
                raise TypeError(f"stage {stage}: export entry {key!r} is {type(value).__name__}, not tensors")
    return flat


def unflatten(flat: dict[str, torch.Tensor]) -> Exports:
    exports: Exports = {}
    for name, t in flat.items():
        stage, key, *param = name.split("/", 2)
        if param:
            exports.setdefault(stage, {}).setdefault(key, {})[param[0]] = t
        else:
            exports.setdefault(stage, {})[key] = t
    return exports


def write_artifact(bundle: Bundle, out: Storage, *, command: str = "") -> dict[str, Any]:
    """Write `bundle` as an artifact folder; returns artifact.json's record. Files are written first
    and artifact.json last, so a folder without it is an interrupted export, never a loadable one."""
    from safetensors.torch import save as save_safetensors

    files = {
        WEIGHTS_FILE: save_safetensors(flatten(bundle.exports), metadata={"format": f"ups-artifact-{FORMAT}"}),
        CONFIG_FILE: to_yaml(bundle.cfg).encode(),
        META_FILE: json.dumps(bundle.meta.to_dict()).encode(),
    }
    record = {
        "format": FORMAT,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "stages": sorted(bundle.exports),
        "corrector": bundle.cfg.eval.corrector,
        "metrics": bundle.metrics,
        "digests": bundle.digests,
        "provenance": {**bundle.provenance, "source": bundle.source, "source_kind": bundle.kind,
                       "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
                       "versions": _versions(), "machine": _machine()},
    }  # fmt: skip
    for name, data in files.items():
        out.write_bytes(data, name)
    out.write_text(model_card(bundle, record), CARD_FILE)
    out.write_json(record, ARTIFACT_FILE)
    return record


def _machine() -> str:
    """The exporting machine in words (the card's hardware line; training walls are the run's own)."""
    import os

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.platform()}, {os.cpu_count()} CPUs{gpu}"


def _versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}


def model_card(bundle: Bundle, record: dict[str, Any]) -> str:
    """README.md of an artifact: what it was trained on, how, how good, and how to use it."""
    cfg, meta, prov = bundle.cfg, bundle.meta, record["provenance"]
    stages = prov.get("stages") or {}
    lines = [
        f"# UPS latent surrogate: {', '.join(meta.tasks)}",
        "",
        "A latent neural PDE surrogate trained by UPS on Ray: encoder -> latent operator"
        + (f" + {cfg.eval.corrector} corrector" if cfg.eval.corrector != "none" else "") + " -> decoder.",
        "",
        "    from ups import Surrogate",
        "    s = Surrogate.load('THIS_FOLDER')",
        f"    u = s.rollout(u0, steps={meta.frames - meta.initial_step})  "
        f"# u0: (batch, {meta.initial_step}, {', '.join(map(str, meta.spatial_shape))}, {meta.channels})",
        "",
        "## Trained on",
        "",
        f"- data: {', '.join(prov.get('data_paths') or []) or 'not recorded'} "
        f"(digest {str(bundle.digests.get('data'))[:16]})",
        f"- grid {meta.spatial_shape} (x_stride {cfg.data.x_stride}), {meta.frames} frames (t_stride "
        f"{cfg.data.t_stride}), {meta.channels} channel(s), Δt {', '.join(f'{d:.4g}' for d in meta.dts)}; "
        f"{meta.initial_step} input frame(s)",
        f"- split: first {cfg.data.test_fraction:.0%} test, {cfg.data.val_fraction:.0%} val "
        "(val selects, test reports)",
        "",
        "## Recipe",
        "",
        f"- latent {cfg.latent.tokens} tokens x {cfg.latent.dim} "
        f"({cfg.latent.tokens * cfg.latent.dim} numbers per frame for a field of "
        f"{math.prod(meta.spatial_shape) * meta.channels})",
        f"- encoder {cfg.model.encoder.arch}, decoder {cfg.model.decoder.arch}, operator {cfg.model.operator.arch}",
    ]  # fmt: skip
    for name, rec in stages.items():
        if isinstance(rec, dict) and rec.get("status") == "completed":
            best = rec.get("best") or {}
            ran = rec.get("trained_with") or {}
            how = (f"; batch {ran['batch_size']} x {ran['steps_per_epoch']} steps/epoch, {ran['optimizer']['name']} "
                   f"lr {ran['optimizer']['lr']:g}, {ran['scheduler']['name']} schedule, EMA {ran['ema_decay']:g}, "
                   f"clip {ran['grad_clip']:g}") if ran else ""  # fmt: skip
            lines.append(f"- stage {name}: {rec.get('epochs')} epochs, {rec.get('wall_time_s', '?')} s, best "
                         f"{best.get('metric', '?')}={best.get('value', float('nan')):.4g}{how}")  # fmt: skip
    lines += ["", "## Metrics (PDEBench nRMSE of the decoded autoregressive rollout)", ""]
    cols = [("nRMSE", "surrogate"), ("operator_nRMSE", "operator alone"), ("fno_nRMSE", "FNO baseline"),
            ("recon_nRMSE", "autoencoder floor"), ("one_step_nRMSE", "one step"),
            ("persistence_nRMSE", "persistence")]  # fmt: skip
    lines.append("| split | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for split, m in bundle.metrics.items():
        lines.append(f"| {split} | " + " | ".join(f"{m[k]:.4g}" if k in m else "-" for k, _ in cols) + " |")
    lines += [
        "",
        "## Provenance",
        "",
        f"- run: {prov.get('run')} ({prov.get('source_kind')} {prov.get('source')})",
        f"- config digest {str(bundle.digests.get('config'))[:16]}; weights: "
        + ", ".join(f"{s} {str(d)[:12]}" for s, d in (bundle.digests.get("weights") or {}).items()),
        f"- exported {prov.get('exported')} on {prov.get('machine')}; versions {prov.get('versions')}",
        f"- trained with: `{prov.get('trained_with') or 'not recorded'}`",
        f"- exported with: `{prov.get('command') or 'ups.artifact.write_artifact'}`",
        "",
        f"Every file is listed with its sha256 in {ARTIFACT_FILE}; `Surrogate.load` refuses a folder whose files do "
        "not match.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
