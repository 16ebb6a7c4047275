"""Names that become folders: run and sweep names (`--name`) and champion families (`gate.family`).

A name is one path segment, so `{storage}/{name}` can never reach outside the storage root, and
its characters are safe in local paths, object-store keys and URIs alike. The same rule for every
kind of name keeps one message to learn.
"""

from __future__ import annotations

import re

from ups.errors import ConfigError

MAX_LEN = 100  # leaves room under the usual 255-byte segment limit for suffixes like `.replaced-<stamp>`
RULE = (
    f"must be one path segment of letters, digits, '.', '_', '-' (at most {MAX_LEN} characters), "
    "starting with a letter or digit"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_problem(value: object) -> str | None:
    """What is wrong with `value` as a name, or None. For callers that add their own prefix (config keys)."""
    if not isinstance(value, str) or len(value) > MAX_LEN or not _NAME.fullmatch(value):
        return RULE
    return None


def check_name(what: str, value: str) -> str:
    """`value`, or ConfigError naming the flag or key (`what`) and the value."""
    problem = name_problem(value)
    if problem:
        size = f" (got {len(value)} characters)" if isinstance(value, str) and len(value) > MAX_LEN else ""
        raise ConfigError(f"{what} {_shown(value)}: {problem}{size}")
    return value


def slug(text: str, max_len: int = MAX_LEN) -> str:
    """`text` made into a valid name (runs of other characters become '-'); "run" when nothing is left.
    For names the user did not type, e.g. a config file's stem in the default run name."""
    s = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._-]+", "-", text))
    return s[:max_len].rstrip("-") or "run"


def _shown(value: object) -> str:
    """The value quoted, and cut short so an absurdly long one still fits one line."""
    r = repr(value)
    return r if len(r) <= MAX_LEN + 20 else r[: MAX_LEN + 10] + "...'"
