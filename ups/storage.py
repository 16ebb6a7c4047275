"""Run storage: a local folder or a cloud URI (s3://, gs://, file://), through pyarrow filesystems.

Ray Train uses the same pyarrow filesystems for checkpoints, so one `Storage` describes where a
run's files, Ray's checkpoints and the registry live. Every write is whole-file and atomic on a
local disk (temp file + rename); object stores make a PUT atomic on their own.

Everything a `Storage` touches lies under its root: parts that would leave it raise `PathEscape`.
A URI may carry credentials (`s3://KEY:SECRET@bucket/...`, `?secret_key=...`); `Storage.uri` keeps
them for pyarrow and Ray, `Storage.shown` (and `redact`) is what may be printed or recorded.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ups.errors import ConfigError

# The schemes pyarrow.fs.FileSystem.from_uri understands (it is case-sensitive), less its test-only `mock`.
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
# Query parameters whose value is a credential: pyarrow's own (access_key, secret_key, session_token),
# and those of signed URLs: AWS SigV2/SigV4 (AWSAccessKeyId, Signature, X-Amz-Signature,
# X-Amz-Credential, X-Amz-Security-Token), GCS (X-Goog-Signature, X-Goog-Credential), Azure SAS (sig).
_SECRET_PARAM = re.compile(r"key|secret|token|passw|pwd|credential|signature|^sig$|auth", re.IGNORECASE)


class LinkEscape(ConfigError):
    """A local path below a storage root that passes through a symbolic link: what is written,
    moved or deleted through it lands wherever the link points, outside the storage."""


class PathEscape(ValueError):
    """A path part that would leave the storage root. A bug in the caller, not a user error: names the
    user types are checked before they get here (ups/names.py)."""


def redact(uri: str) -> str:
    """`uri` with its user-info and any secret-looking query value replaced by `***`, for messages and records.

    A secret key may hold an unescaped '/' or '?', which ends the URI's authority early
    (`s3://KEY:SE/CRET@bucket`), so an '@' after a 'KEY:' authority still marks the end of user-info.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    # User-info ends at the last '@' of a `KEY:SECRET@` authority, even when the secret holds a '/'
    # or '?' (which would end the authority early); `host:8020/path@x` has no user-info.
    authority = re.split(r"[/#?]", rest, maxsplit=1)[0]
    host_port = authority.partition(":")[2]
    if "@" in authority:
        rest = "***" + rest[authority.rindex("@") :]
    elif host_port and not host_port.isdigit() and "@" in rest:
        rest = "***" + rest[rest.rindex("@") :]
    rest, qsep, query = rest.partition("?")
    if qsep:
        params = [p.partition("=") for p in query.split("&")]
        query = "&".join(k + eq + ("***" if eq and is_secret_param(k) else v) for k, eq, v in params)
    return f"{scheme}{sep}{rest}{qsep}{query}"


def is_secret_param(name: str) -> bool:
    """Whether a URI query parameter (as written, %-escapes allowed) carries a credential."""
    return bool(_SECRET_PARAM.search(urllib.parse.unquote_plus(name).strip()))


def redact_all(obj: Any) -> Any:
    """A JSON-like record with every string passed through `redact`: what may be written beside a run."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_all(v) for v in obj]
    return obj


def check_storage(uri: str, flag: str = "--storage") -> str:
    """`uri`, or ConfigError naming `flag` and the (redacted) value, for a storage root that cannot work.

    Runs before any Ray resource is used: cloud URIs are only parsed (no network); a local root must
    be a folder, or creatable inside the nearest folder that exists, and writable.
    """
    shown = f"{flag} {redact(uri)!r}"
    if not uri.strip():
        raise ConfigError(f"{shown}: empty; give a folder or an s3://, gs://, file:// URI")
    scheme, sep, _ = uri.partition("://")
    if not sep:
        head = uri.split(":", 1)[0]
        if ":" in uri and head.lower() in SCHEMES:
            raise ConfigError(f"{shown}: a URI needs '://' after its scheme ({head}://...)")
        _check_local(shown, uri)
        return uri
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(f"{shown}: unknown scheme {scheme!r} (known: {known}; a plain path is a folder)")
    split = urllib.parse.urlsplit(uri)
    if scheme == "file":
        if split.netloc:
            raise ConfigError(
                f"{shown}: a file:// URI needs an absolute path (file:///abs/path); or give a plain folder path"
            )
        _check_local(shown, urllib.parse.unquote(split.path))
        return uri
    if not split.hostname:
        raise ConfigError(f"{shown}: needs a bucket or host ({scheme}://BUCKET/PATH)")
    if redact(uri) != uri:
        # A URI is printed, logged and recorded in summaries, registries and Ray's own state: a
        # secret in it would end up in all of them. Credentials come from where the cloud SDKs look.
        raise ConfigError(
            f"{shown}: holds credentials; give them through the environment (AWS_ACCESS_KEY_ID, "
            f"AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS) or a credentials file, not in the URI"
        )
    return uri


def check_creatable_parent(shown: str, path: str) -> None:
    """The folder a file will be written into exists or can be created, and is writable."""
    _check_local(shown, os.path.dirname(os.path.abspath(path)))


def _check_local(shown: str, path: str) -> None:
    """A local root: a folder, or one that can be created inside its nearest existing ancestor."""
    target = os.path.abspath(path)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ConfigError(f"{shown}: {target} exists and is not a folder")
    probe = target
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{shown}: {probe} is not a folder, so {target} cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown}: {probe} is not writable")


def _relative(parts: tuple[str, ...]) -> str:
    """The parts as one relative path below the root ('' for the root itself), or PathEscape.

    '..' is refused outright rather than normalised away: through a symlink, `a/../b` is not `b`.
    """
    for p in parts:
        if not isinstance(p, str) or not p or p.startswith("/") or "\0" in p or ".." in p.split("/"):
            raise PathEscape(f"storage path part {p!r}: must be a non-empty relative path without '..'")
    rel = posixpath.normpath(posixpath.join(*parts)) if parts else ""
    if rel == ".":
        raise PathEscape(f"storage path {'/'.join(parts)!r}: must name something below the root")
    return rel


class Storage:
    """One root (folder or bucket prefix) and the pyarrow filesystem that reaches it."""

    fs: pafs.FileSystem
    root: str  # filesystem path, no scheme
    uri: str  # the scheme (and any credentials, query) kept for cloud roots, an absolute path locally
    local: bool  # local roots write through temp file + rename

    def __init__(self, uri: str) -> None:
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (OSError, ValueError) as e:  # an unknown bucket, no network, a bad endpoint
                msg = redact(str(e).splitlines()[0]) if str(e) else type(e).__name__
                raise ConfigError(f"storage {redact(uri)}: cannot be reached ({msg})") from None
            base, sep, query = uri.partition("?")
            self.uri = base.rstrip("/") + sep + query
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).resolve())
            self.uri = self.root
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        # The root as given is trusted (it may itself be a link, e.g. runs -> /mnt/big/runs); below
        # it, writes never pass through a link (`_unlinked`). Sub-storages keep their parent's anchor.
        self.anchor = self.root
        self.anchor_real = os.path.realpath(self.root) if self.local else self.root

    @property
    def shown(self) -> str:
        """The URI with credentials redacted: what messages and records may hold."""
        return redact(self.uri)

    def __repr__(self) -> str:
        return f"Storage({self.shown})"

    def sub(self, *parts: str) -> Storage:
        """A Storage rooted at a sub-folder (e.g. one run)."""
        child = Storage.__new__(Storage)
        child.fs, child.local = self.fs, self.local
        child.root, child.uri = self.path(*parts), self.uri_of(*parts)
        child.anchor = getattr(self, "anchor", self.root)
        child.anchor_real = getattr(self, "anchor_real", self.root)
        return child

    def _unlinked(self, target: str) -> str:
        """`target`, or LinkEscape when, on a local disk, it is reached through a symbolic link below
        the storage's root (a link planted in a run folder would carry the run's writes anywhere)."""
        if self.local:
            want = os.path.normpath(os.path.join(self.anchor_real, os.path.relpath(target, self.anchor)))
            if os.path.realpath(target) != want:
                raise LinkEscape(
                    f"{target}: reached through a symbolic link below {self.anchor}; "
                    f"refusing to write where it points (outside the storage)"
                )
        return target

    def kind(self, *parts: str) -> str:
        """What is at a path: missing, file, dir, or (local disks) link, whatever the link points to."""
        p = self.path(*parts)
        if self.local and os.path.islink(p):
            return "link"
        t = self.fs.get_file_info(p).type
        return "missing" if t == pafs.FileType.NotFound else "dir" if t == pafs.FileType.Directory else "file"

    def links_below(self, *parts: str, opaque: tuple[str, ...] = ()) -> list[str]:
        """Every symbolic link under a local folder, as paths relative to it (none on object stores).
        The insides of the `opaque` sub-folders (another tool's, with links of its own) are not
        walked; the folders themselves are still reported if they are links."""
        top = self.path(*parts)
        if not self.local or not os.path.isdir(top):
            return []
        found = []
        for here, dirs, files in os.walk(top):  # os.walk does not descend into linked folders
            found += [os.path.relpath(os.path.join(here, n), top) for n in (*dirs, *files)
                      if os.path.islink(os.path.join(here, n))]  # fmt: skip
            if here == top:
                dirs[:] = [d for d in dirs if d not in opaque]
        return sorted(found)

    def path(self, *parts: str) -> str:
        """Filesystem path (no scheme) of a file under the root."""
        rel = _relative(parts)
        return posixpath.join(self.root, rel) if rel else self.root

    def uri_of(self, *parts: str) -> str:
        """URI of a file under the root (scheme kept for cloud roots): what Ray and pyarrow use.
        It may hold credentials: print or record `redact(uri_of(...))`."""
        rel = _relative(parts)
        base, sep, query = self.uri.partition("?")  # the query (region, endpoint, keys) stays last
        return (posixpath.join(base, rel) if rel else base) + sep + query

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self._unlinked(self.path(*parts)), recursive=True)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self._unlinked(self.path(*parts))
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
            self.fs.delete_dir(self._unlinked(self.path(*parts)))

    def move(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        """Rename a file or folder. On a local disk that is one atomic rename. An object store has
        no folders to rename (S3's CopyObject takes one key): a folder is copied file by file, any
        `manifest.json` last, then deleted, so a reader that trusts only a manifest whose files all
        verify (the latent cache) never takes a half-moved folder for a whole one."""
        a, b = self._unlinked(self.path(*src)), self._unlinked(self.path(*dst))
        self.fs.create_dir(posixpath.dirname(b), recursive=True)
        if self.local or self.fs.get_file_info(a).type != pafs.FileType.Directory:
            self.fs.move(a, b)
            return
        files = [
            i.path for i in self.fs.get_file_info(pafs.FileSelector(a, recursive=True)) if i.type == pafs.FileType.File
        ]
        for f in sorted(files, key=lambda f: (posixpath.basename(f) == "manifest.json", f)):
            self.fs.copy_file(f, b + f[len(a) :])
        self.fs.delete_dir(a)
