"""Run storage: a local folder or a cloud URI (s3://, gs://, file://), through pyarrow filesystems.

Ray Train uses the same pyarrow filesystems for checkpoints, so one `Storage` describes where a
run's files, Ray's checkpoints and the registry live. Every write is whole-file and atomic on a
local disk (temp file + rename); object stores make a PUT atomic on their own.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


class Storage:
    """One root (folder or bucket prefix) and the pyarrow filesystem that reaches it."""

    fs: pafs.FileSystem
    root: str  # filesystem path, no scheme
    uri: str  # the scheme kept for cloud roots, an absolute path locally
    local: bool  # local roots write through temp file + rename

    def __init__(self, uri: str) -> None:
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
            self.uri = uri.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).resolve())
            self.uri = self.root
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.uri})"

    def sub(self, *parts: str) -> Storage:
        """A Storage rooted at a sub-folder (e.g. one run)."""
        child = Storage.__new__(Storage)
        child.fs, child.local = self.fs, self.local
        child.root = posixpath.join(self.root, *parts)
        child.uri = posixpath.join(self.uri, *parts)
        return child

    def path(self, *parts: str) -> str:
        """Filesystem path (no scheme) of a file under the root."""
        return posixpath.join(self.root, *parts)

    def uri_of(self, *parts: str) -> str:
        """URI of a file under the root (scheme kept for cloud roots): what Ray, records and messages use."""
        return posixpath.join(self.uri, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        if not self.local:
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", *parts)

    def listdir(self, *parts: str, dirs_only: bool = False) -> list[str]:
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(
            posixpath.basename(i.path)
            for i in self.fs.get_file_info(sel)
            if not dirs_only or i.type == pafs.FileType.Directory
        )

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def move(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        self.fs.create_dir(posixpath.dirname(self.path(*dst)), recursive=True)
        self.fs.move(self.path(*src), self.path(*dst))
