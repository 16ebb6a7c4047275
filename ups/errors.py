"""The errors a user's input can raise, in a module that imports nothing of the project.

Everything that checks input (the schema, names, storage URIs, data files, flags) raises these,
and entry points print the one-line message and exit 2. Living at the bottom of the import graph,
they can be raised from any layer without pulling the schema (or anything else) in.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config, include, override or data file; the message is one line for the user."""


class KeyedError(ValueError):
    """A cross-field error that knows which dotted key to blame."""

    def __init__(self, key: str, msg: str, also: tuple[str, ...] = ()) -> None:
        super().__init__(msg)
        self.key, self.msg = key, msg
        self.also = also  # other keys that take part: the one set last is named as the source
