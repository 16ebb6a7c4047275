"""Where data files live: a local path, or an object-store URI (s3://, gs://) read through pyarrow.

The readers (`ups.data.pdebench`) open every file through `open_binary` and ask `info` whether it
exists, so the same code reads a local file and an object in a bucket, on the driver and in the
Ray tasks that stream chunks on any node. Credentials come from where the cloud SDKs look (the
environment, a credentials file, the instance's role), never from the URI: a URI is printed and
recorded, so one holding a secret is refused by the config schema.

HDF5 through an object store is random access over HTTP range requests: h5py reads the file's
metadata and the selected chunks, not the whole object. A 4 MiB read-ahead buffer turns h5py's many
small reads into few requests.
"""

from __future__ import annotations

import io
import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from typing import Any, BinaryIO

from ups.schema import REMOTE_SCHEMES  # what pyarrow.fs reads here; file:// is a local path

READ_AHEAD = 4 << 20


def scheme(path: str) -> str | None:
    return path.split("://", 1)[0] if "://" in path else None


def is_remote(path: str) -> bool:
    return scheme(path) in REMOTE_SCHEMES


def stem(path: str) -> str:
    """The file's name without its suffix: a task's name, for a path or a URI."""
    name = posixpath.basename(urllib.parse.urlsplit(path).path) if is_remote(path) else os.path.basename(path)
    return os.path.splitext(name)[0]


@dataclass(frozen=True)
class FileStat:
    exists: bool
    is_dir: bool
    size: int


def _filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def info(path: str) -> FileStat:
    """Whether `path` exists, is a folder, and its size; OSError when the store cannot be asked
    (network, credentials)."""
    if not is_remote(path):
        return FileStat(os.path.exists(path), os.path.isdir(path), os.path.getsize(path) if os.path.isfile(path) else 0)
    import pyarrow.fs as pafs

    fs, key = _filesystem(path)
    st = fs.get_file_info(key)
    return FileStat(st.type != pafs.FileType.NotFound, st.type == pafs.FileType.Directory, int(st.size or 0))


def exists(path: str) -> bool:
    return info(path).exists


class _ArrowRaw(io.RawIOBase):
    """A pyarrow input file as a raw binary stream (what io.BufferedReader wraps)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._f.seek(offset, whence))

    def tell(self) -> int:
        return int(self._f.tell())

    def close(self) -> None:
        self._f.close()
        super().close()


def open_binary(path: str) -> BinaryIO:
    """A seekable binary reader of a remote object (local files are opened by h5py itself)."""
    fs, key = _filesystem(path)
    return io.BufferedReader(_ArrowRaw(fs.open_input_file(key)), READ_AHEAD)
