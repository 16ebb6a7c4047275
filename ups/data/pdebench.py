"""Read and write PDEBench HDF5 files.

Three layouts exist in the wild (reference §1): one `tensor` dataset (scalar PDEs), one
dataset per variable (CFD), and per-seed groups `0000`, `0001`, ... (diff-react, SWE,
diff-sorp). Files are tens of GiB, so `read` only asks HDF5 for the requested hyperslab and
`inspect` touches metadata only. Coordinates are always read from the file: the domain
differs between datasets and even between download dates of the same dataset.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ups.data import files
from ups.storage import redact

VARIABLES = ("density", "pressure", "Vx", "Vy", "Vz")
_SPACE_NAMES = ("x", "y", "z")
_COORD_KEYS = {"x": "x-coordinate", "y": "y-coordinate", "z": "z-coordinate", "t": "t-coordinate"}

Space = slice | tuple[slice, ...] | None


class PDEBenchFormatError(ValueError):
    """A file that is not a PDEBench layout we understand; the message is one line."""


@dataclass(frozen=True)
class FileInfo:
    path: str
    layout: str  # "tensor" | "variables" | "per_seed"
    n_samples: int
    n_times: int
    spatial_shape: tuple[int, ...]
    channels: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Layout:
    """What `_detect` learnt: where the data and the coordinates live."""

    kind: str
    shape: tuple[int, ...]  # (N, T, *space) for every layout
    channels: tuple[str, ...]
    datasets: tuple[str, ...]  # tensor/variable names, or per-seed group names
    coords: dict[str, str]  # axis -> dataset path ("grid/x" is relative to a seed group)
    values: dict[str, np.ndarray]  # axis -> the coordinate's values, checked (the first seed's)


def _err(path: str, what: str) -> PDEBenchFormatError:
    return PDEBenchFormatError(f"{redact(path)}: {what}")


def _py(value: Any) -> Any:
    """h5py hands back numpy scalars and bytes; callers want plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _resolve(group: h5py.Group, key: str, path: str, where: str, depth: int = 0) -> Any:
    """The object at `key` below `group`, following only links that stay inside this file, or None
    when it is missing. h5py follows an external link (into another file, anywhere on the disk)
    as readily as a hard link; here an external or user-defined link, a soft link that dangles, and
    a chain of soft links are refused with one line naming the link."""
    if depth > 8:
        raise _err(path, f"'{where}' is a chain of more than 8 soft links")
    node: Any = group
    for part in (p for p in key.split("/") if p):
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.HardLink):
            node = node[part]
        elif isinstance(link, h5py.SoftLink):
            target = _resolve(node.file if link.path.startswith("/") else node, link.path, path, where, depth + 1)
            if target is None:
                raise _err(path, f"'{where}' is a soft link to {link.path!r}, which is not in the file")
            node = target
        elif isinstance(link, h5py.ExternalLink):
            raise _err(path, f"'{where}' is an external link to {link.filename}:{link.path}; "
                             f"only data stored in the file itself is read")  # fmt: skip
        else:
            raise _err(path, f"'{where}' is a {type(link).__name__}; only data stored in the file itself is read")
    return node


def _has(group: h5py.Group, key: str) -> bool:
    """Whether a link named `key` exists (without following it, so nothing outside the file is opened)."""
    return group.get(key, getlink=True) is not None


def _dataset(f: h5py.File | h5py.Group, key: str, path: str, where: str = "") -> h5py.Dataset:
    obj = _resolve(f, key, path, f"{where}{key}")
    if not isinstance(obj, h5py.Dataset):
        raise _err(path, f"missing dataset '{where}{key}'")
    if obj.is_virtual:  # its values are read from other files, wherever the mapping says
        raise _err(path, f"dataset '{where}{key}' is a virtual dataset; only data stored in the file itself is read")
    external = obj.external
    if external:
        raise _err(path, f"dataset '{where}{key}' stores its values in an external file "
                         f"({_py(external[0][0])}); only data stored in the file itself is read")  # fmt: skip
    if obj.dtype.kind not in "fiu":  # strings, bools, complex, compound: not a field
        raise _err(path, f"dataset '{where}{key}' has dtype {obj.dtype}, expected real numbers")
    return obj


def _group(f: h5py.File, name: str, path: str) -> h5py.Group:
    g = _resolve(f, name, path, name)
    if not isinstance(g, h5py.Group):
        raise _err(path, f"'{name}' is not a group of one seed")
    return g


def _coordinate(ds: h5py.Dataset, path: str, name: str) -> np.ndarray:
    """A coordinate's values, checked: a NaN grid or a constant time axis (dt = 0) is refused here
    rather than as a division by zero deep inside training. Its length was checked against the
    data before this reads it, so a coordinate that declares terabytes is never read."""
    c = np.asarray(ds[()], dtype=np.float64)
    if not np.isfinite(c).all():
        raise _err(path, f"coordinate '{name}' contains NaN/Inf")
    steps = np.diff(c)
    if len(steps) and not (steps > 0).all():
        i = int(np.argmax(~(steps > 0)))
        raise _err(
            path,
            f"coordinate '{name}' is not strictly increasing ({c[i]:.6g} then {c[i + 1]:.6g} at index {i + 1})",
        )
    return c


def _coords(
    f: h5py.Group, path: str, coords: dict[str, str], shape: tuple[int, ...], prefix: str = ""
) -> dict[str, np.ndarray]:
    """Coordinate datasets must exist, be 1-D, and match the data (t may have one extra entry);
    their shapes are checked from the metadata first, then the values are read and checked."""
    n_times, space = shape[1], shape[2:]
    found = {}
    for axis, key in coords.items():
        ds = _dataset(f, key, path, prefix)
        if ds.ndim != 1:
            raise _err(path, f"coordinate '{prefix}{key}' has rank {ds.ndim}, expected 1")
        if axis == "t":
            if ds.shape[0] not in (n_times, n_times + 1):
                raise _err(
                    path,
                    f"coordinate '{prefix}{key}' has {ds.shape[0]} entries, "
                    f"expected {n_times} or {n_times + 1} (data has {n_times} frames)",
                )
        else:
            n = space[_SPACE_NAMES.index(axis)]
            if ds.shape[0] != n:
                raise _err(path, f"coordinate '{prefix}{key}' has {ds.shape[0]} entries, data has {n} along {axis}")
        found[axis] = ds
    return {axis: _coordinate(ds, path, f"{prefix}{coords[axis]}") for axis, ds in found.items()}


def _nonempty(path: str, name: str, shape: tuple[int, ...]) -> None:
    """A dataset with no samples (or no frames, no grid points) is the file's fault, said so here
    rather than as an empty split blamed on the config's fractions."""
    if 0 in shape:
        what = "no samples" if shape[0] == 0 else "an empty axis"
        raise _err(path, f"dataset '{name}' has shape {shape}: {what}, nothing to train on")


def _single_file(f: h5py.File, path: str, names: tuple[str, ...], kind: str) -> _Layout:
    first = _dataset(f, names[0], path)
    # The rank decides how many spatial axes (and so which coordinates) there must be.
    n_space = first.ndim - 2
    if not 1 <= n_space <= 3:
        raise _err(path, f"dataset '{names[0]}' has rank {first.ndim} {first.shape}, expected 3 to 5 (N, T, X[, Y, Z])")
    extra = [_COORD_KEYS[a] for a in _SPACE_NAMES[n_space:] if _has(f, _COORD_KEYS[a])]
    if extra:
        raise _err(path, f"dataset '{names[0]}' has rank {first.ndim} but the file also has '{extra[0]}'")
    for name in names[1:]:
        ds = _dataset(f, name, path)
        if ds.shape != first.shape:
            raise _err(path, f"dataset '{name}' has shape {ds.shape}, '{names[0]}' has {first.shape}")
    _nonempty(path, names[0], first.shape)
    coords = {a: _COORD_KEYS[a] for a in (*_SPACE_NAMES[:n_space], "t")}
    values = _coords(f, path, coords, first.shape)
    return _Layout(kind, tuple(first.shape), names if kind == "variables" else ("u",), names, coords, values)


def _seed_data(f: h5py.File, path: str, name: str, ref_shape: tuple[int, ...] | None) -> h5py.Dataset:
    ds = _dataset(_group(f, name, path), "data", path, f"{name}/")
    if ref_shape is not None and ds.shape != ref_shape:
        raise _err(path, f"dataset '{name}/data' has shape {ds.shape}, the first seed's has {ref_shape}")
    return ds


def _per_seed(f: h5py.File, path: str, seeds: list[str], check_all: bool) -> _Layout:
    ref = _seed_data(f, path, seeds[0], None)
    n_space = ref.ndim - 2
    if not 1 <= n_space <= 3:
        raise _err(
            path, f"dataset '{seeds[0]}/data' has rank {ref.ndim} {ref.shape}, expected 3 to 5 (T, X[, Y, Z], C)"
        )
    # inspect() checks every seed (metadata only); read() checks just the seeds it reads.
    for name in seeds[1:] if check_all else ():
        _seed_data(f, path, name, ref.shape)
    shape = (len(seeds), ref.shape[0], *ref.shape[1:-1])
    _nonempty(path, f"{seeds[0]}/data", ref.shape)
    coords = {a: f"grid/{a}" for a in (*_SPACE_NAMES[:n_space], "t")}
    values = _coords(_group(f, seeds[0], path), path, coords, shape, prefix=f"{seeds[0]}/")
    channels = tuple(f"c{i}" for i in range(ref.shape[-1]))
    return _Layout("per_seed", shape, channels, tuple(seeds), coords, values)


def _detect(f: h5py.File, path: str, check_all: bool = True) -> _Layout:
    keys = list(f.keys())
    if _has(f, "tensor"):
        return _single_file(f, path, ("tensor",), "tensor")
    present = tuple(v for v in VARIABLES if _has(f, v))
    if present:
        return _single_file(f, path, present, "variables")
    seeds = sorted(k for k in keys if k.isdigit() and isinstance(_resolve(f, k, path, k), h5py.Group))
    if seeds:
        return _per_seed(f, path, seeds, check_all)
    shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
    raise _err(
        path, f"unknown layout: no 'tensor', no {'/'.join(VARIABLES)}, no per-seed groups; top-level keys: [{shown}]"
    )


def _open(path: str) -> h5py.File:
    """Open for reading, or say in one line why a path is not a readable HDF5 file."""
    if files.is_remote(path):
        return _open_remote(path)
    if not os.path.exists(path):
        raise _err(path, "does not exist")
    if os.path.isdir(path):
        raise _err(path, "is a directory, not an HDF5 file")
    if not os.access(path, os.R_OK):
        raise _err(path, "cannot be read (permission denied)")
    if os.path.getsize(path) == 0:
        raise _err(path, "is empty, not an HDF5 file")
    if not h5py.is_hdf5(path):
        raise _err(path, "is not an HDF5 file (no HDF5 signature)")
    try:
        return h5py.File(path, "r")
    except OSError as e:  # a truncated or damaged file has the signature but no readable structure
        raise _err(path, f"cannot be opened as HDF5, truncated or damaged? ({str(e).splitlines()[0]})") from None


def _open_remote(path: str) -> h5py.File:
    """An object in a bucket, opened by h5py over range reads (ups.data.files)."""
    try:
        st = files.info(path)
        if not st.exists:
            raise _err(path, "not found")
        if st.is_dir:
            raise _err(path, "is a folder (a prefix), not an HDF5 file")
        if st.size == 0:
            raise _err(path, "is empty, not an HDF5 file")
        reader = files.open_binary(path)
    except OSError as e:  # the store cannot be reached, or refuses the credentials
        raise _err(path, f"cannot be read ({str(e).splitlines()[0]})") from None
    try:
        return h5py.File(reader, "r")
    except OSError as e:
        reader.close()
        raise _err(path, f"is not an HDF5 file, or is truncated or damaged ({str(e).splitlines()[0]})") from None


def inspect(path: str | os.PathLike[str]) -> FileInfo:
    """Layout, shapes and attributes of a PDEBench file, validated, without reading the data.

    Only coordinates are read (they are small); the field values are scanned by `scan_values`."""
    path = os.fspath(path)
    with _open(path) as f:
        try:
            lay = _detect(f, path)
            attrs = {k: _py(v) for k, v in f.attrs.items()}
        except (OSError, KeyError, RuntimeError) as e:  # damaged metadata inside a readable superblock
            raise _err(path, f"cannot be read as HDF5, truncated or damaged? ({str(e).splitlines()[0]})") from None
    return FileInfo(path, lay.kind, lay.shape[0], lay.shape[1], lay.shape[2:], lay.channels, attrs)


def scan_values(path: str | os.PathLike[str], n_samples: int, chunk_bytes: int = 64 << 20) -> None:
    """Every value of the first `n_samples` trajectories must be finite in float32, the dtype training
    reads (a float64 1e39 is finite in the file and inf in training): a chunked read, so a file larger
    than memory is scanned in bounded memory. Raises PDEBenchFormatError naming the dataset and the
    first bad sample."""
    path = os.fspath(path)
    with _open(path) as f:
        lay = _detect(f, path, check_all=False)
        try:
            if lay.kind == "per_seed":
                ref_shape = (lay.shape[1], *lay.shape[2:], len(lay.channels))
                for i, g in enumerate(lay.datasets[:n_samples]):
                    ds = _seed_data(f, path, g, ref_shape)
                    per_frame = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
                    step = max(1, chunk_bytes // per_frame)
                    for lo in range(0, ds.shape[0], step):  # one seed may itself be larger than memory
                        _check_values(ds[lo : lo + step][None], path, f"{g}/data", range(i, i + 1))
                return
            for name in lay.datasets:
                ds = _dataset(f, name, path)
                per_sample = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
                step = max(1, chunk_bytes // per_sample)
                for lo in range(0, n_samples, step):
                    hi = min(lo + step, n_samples)
                    _check_values(ds[lo:hi], path, name, range(lo, hi))
        except OSError as e:  # a chunk past a truncation
            raise _err(path, f"cannot be read, truncated or damaged? ({str(e).splitlines()[0]})") from None


def _positive(s: slice | None, name: str) -> slice:
    s = slice(None) if s is None else s
    if not isinstance(s, slice):
        raise TypeError(f"{name} must be a slice or None, got {type(s).__name__}")
    if s.step is not None and s.step <= 0:
        raise ValueError(f"{name}: only positive slice steps are supported (HDF5 hyperslabs), got {s.step}")
    return s


def _space_slices(space: Space, n_space: int) -> tuple[slice, ...]:
    if space is None or isinstance(space, slice):
        return (_positive(space, "space"),) * n_space
    space = tuple(space)
    if len(space) != n_space:
        raise ValueError(f"space has {len(space)} slices, the data has {n_space} spatial dimensions")
    return tuple(_positive(s, "space") for s in space)


F32_MAX = float(np.finfo(np.float32).max)


def _check_values(block: np.ndarray, path: str, where: str, samples: range) -> None:
    """Every value of `block` (samples along axis 0, numbered `samples`) must be finite once cast to
    float32: NaN, Inf, and a wider float beyond float32's range are refused, naming the sample."""
    if block.size == 0:
        return
    if block.dtype.kind == "f" and block.dtype.itemsize > 4:
        ok = np.abs(block) <= F32_MAX  # False for NaN as well
    else:
        ok = np.isfinite(block)
    good = ok.reshape(len(block), -1).all(axis=1)
    if good.all():
        return
    i = int(np.argmin(good))
    value = block[i].reshape(-1)[int(np.argmin(ok[i].reshape(-1)))]
    if np.isfinite(value):
        raise _err(
            path,
            f"dataset '{where}' holds {float(value):.6g} at sample {samples[i]}, beyond float32's range "
            f"(+-{F32_MAX:.4g}); training reads float32",
        )
    raise _err(path, f"dataset '{where}' contains NaN/Inf (sample {samples[i]})")


def read(
    path: str | os.PathLike[str],
    *,
    samples: slice | None = None,
    t: slice | None = None,
    space: Space = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a hyperslab as float32 `(N, T, X[, Y, Z], C)` plus float64 coordinates.

    Only the selected hyperslab leaves the disk (h5py strided selections), and only the
    selected seed groups are visited. `t` coordinates are trimmed to the data's frames first,
    because PDEBench stores T+1 times for T frames.
    """
    path = os.fspath(path)
    samples, t = _positive(samples, "samples"), _positive(t, "t")
    with _open(path) as f:
        lay = _detect(f, path, check_all=False)
        n_space = len(lay.shape) - 2
        sp = _space_slices(space, n_space)
        if lay.kind == "per_seed":
            groups = lay.datasets[samples]
            parts = []
            ref_shape = (lay.shape[1], *lay.shape[2:], len(lay.channels))
            # Selections are bound to a name before indexing: mypy (on a 3.11+ parser) cannot tell
            # `ds[(a, *b)]`, valid in 3.10, from the 3.11-only `ds[a, *b]`.
            sel = (t, *sp, slice(None))
            ids = range(*samples.indices(len(lay.datasets)))
            for i, g in zip(ids, groups):
                block = _seed_data(f, path, g, ref_shape)[sel]
                _check_values(block[None], path, f"{g}/data", range(i, i + 1))
                parts.append(block.astype(np.float32, copy=False))
            empty = (0, *_selected_shape(lay.shape[1:], (t, *sp)), len(lay.channels))
            u = np.stack(parts) if parts else np.empty(empty, np.float32)
            values = lay.values
            if groups and groups[0] != lay.datasets[0]:  # this seed's own grid, checked like the first's
                values = _coords(_group(f, groups[0], path), path, lay.coords, lay.shape, f"{groups[0]}/")
        else:
            chans = []
            sel = (samples, t, *sp)
            ids = range(*samples.indices(lay.shape[0]))
            for name in lay.datasets:
                block = _dataset(f, name, path)[sel]
                _check_values(block, path, name, ids)
                chans.append(block.astype(np.float32, copy=False))
            u = np.stack(chans, axis=-1)
            values = lay.values
        coords = {}
        for axis, c in values.items():
            if axis == "t":
                coords["t"] = c[: lay.shape[1]][t]
            else:
                coords[axis] = c[sp[_SPACE_NAMES.index(axis)]]
    return u, coords


def _selected_shape(shape: tuple[int, ...], slices: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(len(range(*s.indices(n))) for n, s in zip(shape, slices))


def write(
    path: str | os.PathLike[str],
    u: np.ndarray,
    coords: dict[str, np.ndarray],
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write the single-file `tensor` layout that PDEBench's `FNODatasetSingle` reads.

    `u` is (N, T, X[, Y, Z]) (a trailing channel axis of 1 is dropped), one spatial axis per
    coordinate in `coords` (x, y, z), each written as an `x-`, `y-`, `z-coordinate`. float32, no chunking or
    compression (as `Data_Merge.py` writes), a `t-coordinate` with T+1 entries. The file appears
    atomically: it is built under a temporary name in the target directory and moved into place,
    so a crash never leaves a truncated file under `path`.
    """
    path = os.fspath(path)
    u = np.asarray(u)
    axes = tuple(a for a in _SPACE_NAMES if a in coords)  # the coordinates say how many spatial axes
    if "x" not in coords or "t" not in coords or axes != _SPACE_NAMES[: len(axes)]:
        raise ValueError(f"coords needs 't' and 'x'[, 'y'[, 'z']], got {sorted(coords)}")
    if u.ndim == len(axes) + 3 and u.shape[-1] == 1:
        u = u[..., 0]
    if u.ndim != len(axes) + 2:
        want = ", ".join(("N", "T", *(a.upper() for a in axes)))
        raise ValueError(f"u must be ({want}) or ({want}, 1) for coords {sorted(coords)}, got shape {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("u contains NaN/Inf; read() would reject the file")
    n_times = u.shape[1]
    space = {a: np.asarray(coords[a], dtype=np.float64) for a in axes}
    for a, n in zip(axes, u.shape[2:]):
        if space[a].shape != (n,):
            raise ValueError(f"coords['{a}'] has shape {space[a].shape}, u has {n} points along {a}")
    tc = np.asarray(coords["t"], dtype=np.float64)
    if tc.shape == (n_times,):
        if n_times < 2:
            raise ValueError("need at least 2 times to extrapolate the extra t-coordinate entry")
        tc = np.append(tc, tc[-1] + (tc[-1] - tc[-2]))
    elif tc.shape != (n_times + 1,):
        raise ValueError(f"coords['t'] has shape {tc.shape}, expected ({n_times},) or ({n_times + 1},)")

    # Same directory, so os.replace is an atomic rename; h5py creates it with normal permissions.
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("tensor", data=u.astype(np.float32, copy=False))
            for a in axes:
                f.create_dataset(_COORD_KEYS[a], data=space[a].astype(np.float32))
            f.create_dataset("t-coordinate", data=tc.astype(np.float32))
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
        with open(tmp, "rb+") as fh:  # data on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
