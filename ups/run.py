"""A run's folder `{storage}/{name}/`: its resolved config, identity and summary.

Re-running the same command with the same name continues the run. A run whose stored config
digest differs from the new one is refused with one line, unless the user asks to start over
(the old folder is moved aside, not deleted) or to continue under the new config.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import yaml

from ups import config as C
from ups.storage import Storage

CONFIG_FILE, RUN_FILE, SUMMARY_FILE = "config.yaml", "run.json", "summary.json"


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def default_name(config_name: str) -> str:
    return f"{config_name}-{utc_stamp()}"


class RunDir:
    def __init__(self, storage: Storage, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise C.ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
        self.name, self.root = name, storage
        self.dir = storage.sub(name)

    def open(self, cfg: C.Config, *, restart: bool = False, accept_change: bool = False) -> dict[str, Any]:
        """Create or re-open the run; returns run.json. Raises ConfigError on a config conflict."""
        digest = C.digest(cfg)
        if self.dir.exists(RUN_FILE):
            info = self.dir.read_json(RUN_FILE)
            if info["config_digest"] != digest:
                if restart:
                    aside = f"{self.name}.replaced-{utc_stamp()}"
                    self.root.move((self.name,), (aside,))
                    print(f"run {self.name}: config changed; previous run moved to {self.root.uri_of(aside)}")
                elif accept_change:
                    print(f"run {self.name}: continuing under a changed config ({self._changes(cfg)})")
                    info["config_digest"] = digest
                    info.setdefault("config_changes", []).append({"at": utc_stamp(), "digest": digest})
                    self._write(cfg, info)
                    return info
                else:
                    raise C.ConfigError(
                        f"{self.dir.uri}: config differs from the stored run ({self._changes(cfg)}); "
                        f"pass --restart to start over or --accept-config-change to continue with it"
                    )
            else:
                return info
        info = {
            "name": self.name,
            "config_digest": digest,
            "created": utc_stamp(),
            "wandb_id": f"{re.sub(r'[^a-z0-9]+', '-', self.name.lower())[:40]}-{uuid.uuid4().hex[:8]}",
        }
        self._write(cfg, info)
        return info

    def _changes(self, cfg: C.Config) -> str:
        old = C.validate(yaml.safe_load(self.dir.read_text(CONFIG_FILE)))
        keys = C.diff(old, cfg)
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        return f"changed: {shown}" if keys else "changed"

    def _write(self, cfg: C.Config, info: dict[str, Any]) -> None:
        self.dir.write_text(C.to_yaml(cfg), CONFIG_FILE)
        self.dir.write_json(info, RUN_FILE)

    def summary(self) -> dict[str, Any]:
        if self.dir.exists(SUMMARY_FILE):
            return self.dir.read_json(SUMMARY_FILE)
        return {"name": self.name, "stages": {}}

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.dir.write_json(summary, SUMMARY_FILE)

    def config(self) -> C.Config:
        return C.validate(yaml.safe_load(self.dir.read_text(CONFIG_FILE)), default_source=self.dir.uri_of(CONFIG_FILE))
