"""A run's folder `{storage}/{name}/`: its resolved config, identity and summary.

Re-running the same command with the same name continues the run. A run whose config changed is
refused with one line, unless the user asks to start over (the old folder is moved aside, not
deleted) or to continue under the new config.

What counts as a change survives package upgrades. `run.json` keeps the digest of the config the
run started with (its checkpoints and exports carry the same one), and `config.yaml` that whole
resolved config. A new config whose digest differs is compared with the stored config *validated
under today's schema*: validation fills every key the stored file lacks (one a newer version
added) with its schema default, so the two agree exactly when the only differences are keys the
run never had, left at their defaults. Such a run resumes under its stored digest, so its
checkpoints still match and it ends bit-identical. A value that differs, a new key set away from
its default, or an existing key whose default moved (the stored file holds the old value) is a
change, refused as before.

Why not digest only what the user set, plus a schema version: a changed default would then go
unseen unless someone remembered to bump the version; the stored resolved config catches it by
itself. The one promise asked of whoever adds a key is the usual one: its default keeps the old
behaviour (a default that does not is a change no stored config can reveal).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import yaml

from ups import config as C
from ups.contracts import SUMMARY_FILE, RunSummary
from ups.names import check_name
from ups.storage import Storage, redact

CONFIG_FILE, RUN_FILE = "config.yaml", "run.json"
ARCHITECTURE = ("model.", "latent.")  # keys whose change makes the run's exports and checkpoints unfit


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def default_name(config_name: str) -> str:
    return f"{config_name}-{utc_stamp()}"


def _keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of a config tree, sections included."""
    out = []
    for k, v in tree.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _keys(v, f"{prefix}{k}.")
    return out


class RunDir:
    def __init__(self, storage: Storage, name: str) -> None:
        check_name("--name", name)  # one path segment: the run stays inside its storage
        self.name, self.root = name, storage
        self.dir = storage.sub(name)

    def check(self, cfg: C.Config, *, restart: bool = False, accept_change: bool = False) -> str:
        """Everything `open` would refuse, found without writing anything: run before the run's lock
        is taken, so a refused command leaves no trace. Returns what `open` will do (`_stored`)."""
        self.check_folder()
        action = self._stored(cfg, restart, accept_change)
        if action != "restart":
            self.summary()
        return action

    def _stored(self, cfg: C.Config, restart: bool, accept_change: bool) -> str:
        """What to do with the folder: "new", "same" (resume: the config is the stored one, up to
        keys it lacks at their defaults), "accept" (continue under the changed config) or "restart"
        (move it aside); ConfigError when none applies."""
        if not self.dir.exists(RUN_FILE):
            return "new"
        try:
            info = self._read_json(RUN_FILE, ("config_digest", "wandb_id"))
            if info["config_digest"] == C.digest(cfg) or C.digest(self.config()) == C.digest(cfg):
                return "same"
            changes = self._changes(cfg)
        except C.ConfigError:
            if restart:
                return "restart"  # unreadable: --restart moves it aside like a changed one
            raise
        if restart:
            return "restart"
        if accept_change:
            arch = [k for k in C.diff(self.config(), cfg) if k.startswith(ARCHITECTURE)]
            if arch:  # the finished stages' exports and the checkpoints no longer fit the networks
                raise C.ConfigError(
                    f"{self.dir.shown}: --accept-config-change cannot keep a run whose architecture changed "
                    f"({arch[0]}{' and more' if len(arch) > 1 else ''}); this change needs --restart"
                )
            return "accept"
        raise C.ConfigError(
            f"{self.dir.shown}: config differs from the stored run ({changes}); "
            f"pass --restart to start over or --accept-config-change to continue with it"
        )

    def check_folder(self) -> None:
        """The run folder is a folder (or absent), its files are files, and on a local disk nothing in
        it is a symbolic link: the run writes through these paths, and a link would carry its
        config, records and weights outside the storage. One line naming the path, else nothing."""
        where = self.dir.shown
        kind = self.dir.kind()
        if kind == "link":
            raise C.ConfigError(f"{where}: the run folder is a symbolic link; a run folder must be a real folder "
                                f"inside its storage")  # fmt: skip
        if kind == "file":
            raise C.ConfigError(f"{where}: is a file, not a run folder")
        if kind == "missing":
            return
        for file in (CONFIG_FILE, RUN_FILE, SUMMARY_FILE):
            if self.dir.kind(file) == "dir":
                raise C.ConfigError(f"{redact(self.dir.uri_of(file))}: is a folder, not a file (damaged run folder)")
        links = self.dir.links_below(opaque=("wandb",))  # W&B links its own files (latest-run, debug.log)
        if links:
            raise C.ConfigError(f"{redact(self.dir.uri_of(links[0]))}: is a symbolic link inside the run folder; "
                                f"the run writes there, so links are refused")  # fmt: skip

    def open(self, cfg: C.Config, *, restart: bool = False, accept_change: bool = False) -> dict[str, Any]:
        """Create or re-open the run; returns run.json. Raises ConfigError on a config conflict."""
        digest = C.digest(cfg)
        action = self._stored(cfg, restart, accept_change)
        if action == "same":
            info = self._read_json(RUN_FILE)
            added = self._added_keys(cfg) if info["config_digest"] != digest else []
            if added:  # resumed under its own digest: its checkpoints still match
                shown = ", ".join(added[:4]) + (f" and {len(added) - 4} more" if len(added) > 4 else "")
                print(f"run {self.name}: resuming; keys added since it started keep their defaults ({shown})")
            return info
        if action == "accept":
            info = self._read_json(RUN_FILE)
            print(f"run {self.name}: continuing under a changed config ({self._changes(cfg)})")
            info["config_digest"] = digest
            info.setdefault("config_changes", []).append({"at": utc_stamp(), "digest": digest})
            self._write(cfg, info)
            return info
        if action == "restart":
            aside = f"{self.name}.replaced-{utc_stamp()}"
            self.root.move((self.name,), (aside,))
            print(f"run {self.name}: config changed; previous run moved to {redact(self.root.uri_of(aside))}")
        info = {
            "name": self.name,
            "config_digest": digest,
            "created": utc_stamp(),
            "wandb_id": f"{re.sub(r'[^a-z0-9]+', '-', self.name.lower())[:40]}-{uuid.uuid4().hex[:8]}",
        }
        self._write(cfg, info)
        return info

    def _changes(self, cfg: C.Config) -> str:
        old = self.config()
        keys = C.diff(old, cfg)
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        return f"changed: {shown}" if keys else "changed"

    def _added_keys(self, cfg: C.Config) -> list[str]:
        """Dotted keys of `cfg` that the stored config.yaml does not have (a newer schema's)."""
        stored = set(_keys(self._stored_tree()))
        return [k for k in _keys(C.to_dict(cfg)) if k not in stored and k.rpartition(".")[0] in stored | {""}]

    def _write(self, cfg: C.Config, info: dict[str, Any]) -> None:
        self.dir.write_text(C.to_yaml(cfg), CONFIG_FILE)
        self.dir.write_json(info, RUN_FILE)

    def _read_json(self, file: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """A run file, or one line saying why it cannot be used (it was edited, truncated or replaced)."""
        try:
            data = json.loads(self.dir.read_bytes(file).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise C.ConfigError(
                f"{redact(self.dir.uri_of(file))}: corrupt, not JSON ({str(e).splitlines()[0]})"
            ) from None
        except RecursionError:  # json nests one Python frame per level: `[[[[...` thousands deep
            raise C.ConfigError(f"{redact(self.dir.uri_of(file))}: corrupt, nested too deeply to read") from None
        except OSError as e:  # a folder or a dangling name where the file should be
            raise C.ConfigError(f"{redact(self.dir.uri_of(file))}: cannot be read ({type(e).__name__})") from None
        missing = [k for k in required if not isinstance(data, dict) or k not in data]
        if missing:
            raise C.ConfigError(f"{redact(self.dir.uri_of(file))}: corrupt, no '{missing[0]}' entry")
        return data

    def summary(self) -> RunSummary:
        """summary.json (an empty one before the first stage finished); one line when damaged."""
        return RunSummary.read(self.dir) if self.dir.exists(SUMMARY_FILE) else RunSummary(name=self.name)

    def write_summary(self, summary: RunSummary) -> None:
        summary.write(self.dir)

    def config(self) -> C.Config:
        """The run's stored, resolved config, validated again under today's schema (the file may have
        been edited; keys added since it was written take their defaults)."""
        return C.validate(self._stored_tree(), default_source=redact(self.dir.uri_of(CONFIG_FILE)), stored=True)

    def _stored_tree(self) -> dict[str, Any]:
        where = redact(self.dir.uri_of(CONFIG_FILE))
        if not self.dir.exists(CONFIG_FILE):
            raise C.ConfigError(f"{where}: missing (not a complete run folder)")
        try:
            tree = yaml.load(self.dir.read_bytes(CONFIG_FILE).decode("utf-8"), Loader=C.YamlLoader)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise C.ConfigError(f"{where}: corrupt, not YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise C.ConfigError(f"{where}: corrupt, not a mapping of keys")
        return tree
