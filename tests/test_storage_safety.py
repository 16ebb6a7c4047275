"""Paths the user names stay under --storage: names are one safe path segment, Storage refuses parts
that leave its root, --storage is checked before anything runs, and credentials in a storage URI
never reach a message. Bad input is one line naming the flag or key, exit 2, nothing written."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs import _cli
from ups.config import ConfigError, LoadedConfig, load_config
from ups.names import MAX_LEN, check_name, slug
from ups.rundir import RunDir
from ups.storage import PathEscape, Storage, check_storage, redact, redact_all

ROOT = Path(__file__).resolve().parents[1]

BAD_NAMES = ["", ".", "..", "../../x", "a/b", "/abs", "a\\b", "a\0b", ".hidden", "-rf", "a b", "x" * (MAX_LEN + 1)]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_run_name_is_one_safe_segment(tmp_path, bad):
    with pytest.raises(ConfigError, match="^--name .*: must be one path segment"):
        RunDir(Storage(str(tmp_path)), bad)
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("good", ["smoke-20240101-000000", "a", "trial-abc_00001", "v1.2", "x" * MAX_LEN])
def test_good_names_pass(tmp_path, good):
    assert RunDir(Storage(str(tmp_path)), good).dir.path() == str(tmp_path / good)


@pytest.mark.parametrize("bad", ["../../x", "a/b", ""])
def test_sweep_name_is_checked_before_ray(tmp_path, bad):
    from ups import sweep
    from ups.config import Config

    with pytest.raises(ConfigError, match="^--name "):
        sweep.run(LoadedConfig(Config(), tmp_path / "s.yaml", {}), bad, str(tmp_path / "runs"))
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("bad", [n for n in BAD_NAMES if n])  # "" is "derived", like leaving it unset
def test_gate_family_names_its_file_and_key(tmp_path, bad):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"gate: {{family: {_yaml_str(bad)}}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert "c.yaml: gate.family: must be one path segment" in msg and repr(bad) in msg
    assert "\n" not in msg


def test_gate_family_from_set_names_the_flag(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("")
    with pytest.raises(ConfigError, match=r"^--set: gate\.family: must be one path segment"):
        load_config(cfg, ["gate.family=../x"])
    for ok in ("", None, "burgers-main"):
        cfg.write_text(f"gate: {{family: {'null' if ok is None else repr(ok)}}}\n")
        assert load_config(cfg).cfg.gate.family == ok


@pytest.mark.parametrize(
    "stem", ["my config (v2)!", ".hidden", "---", "..", "ünïcode", "a" * 200, "run.v1", "a\\b", "-x-"]
)
def test_default_name_from_any_config_stem_is_valid(tmp_path, stem):
    cfg = tmp_path / f"{stem}.yaml"
    cfg.write_text("")
    args = argparse.Namespace(config=str(cfg), overrides=[], name=None, storage=str(tmp_path / "runs"))
    _, name = _cli.load(args)
    assert check_name("--name", name) == name and len(name) <= MAX_LEN


def test_slug_keeps_what_is_safe():
    assert slug("smoke") == "smoke"
    assert slug("my config (v2)") == "my-config-v2"
    assert slug("...") == "run"
    assert len(slug("x" * 500, 84)) == 84


def test_cli_name_flag_is_checked_even_when_empty(tmp_path):
    args = argparse.Namespace(config="nope.yaml", overrides=[], name="", storage=str(tmp_path))
    with pytest.raises(ConfigError, match="^--name '': "):
        _cli.load(args)


def _yaml_str(s: str) -> str:
    """A double-quoted YAML scalar (escapes NUL and backslashes the way YAML reads them back)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\0", "\\0") + '"'


# --- containment --------------------------------------------------------------------------------

ESCAPES = [("..",), ("../x",), ("a", ".."), ("a/../../x",), ("a/../b",), ("/etc/passwd",), ("a", "/b"), ("",), (".",)]


@pytest.mark.parametrize("parts", ESCAPES)
@pytest.mark.parametrize("method", ["sub", "path", "uri_of", "exists", "write_text"])
def test_storage_refuses_parts_that_leave_the_root(tmp_path, parts, method):
    s = Storage(str(tmp_path / "root"))
    call = getattr(s, method)
    with pytest.raises(PathEscape):
        call("x", *parts) if method == "write_text" else call(*parts)
    assert tree(tmp_path) == set()


def test_storage_keeps_multi_segment_parts(tmp_path):
    s = Storage(str(tmp_path))
    assert s.path() == str(tmp_path)
    assert s.sub("ray/operator").path("a") == str(tmp_path / "ray" / "operator" / "a")
    assert s.uri_of("stages", "operator", "export.pt") == str(tmp_path / "stages" / "operator" / "export.pt")
    s.sub("r").write_json({"a": 1}, "x/y.json")
    assert s.read_json("r", "x", "y.json") == {"a": 1}


def test_cloud_uri_query_stays_last_and_repr_is_redacted():
    s = Storage.__new__(Storage)  # no filesystem: only the URI arithmetic, no network
    s.fs, s.local, s.uri, s.root = None, False, "s3://b/runs?region=eu&secret_key=S", "b/runs"
    assert s.uri_of("r", "x.json") == "s3://b/runs/r/x.json?region=eu&secret_key=S"
    assert s.sub("r").uri == "s3://b/runs/r?region=eu&secret_key=S"
    assert repr(s) == "Storage(s3://b/runs?region=eu&secret_key=***)"


# --- --storage ----------------------------------------------------------------------------------


def test_bad_storage_values(tmp_path):
    afile = tmp_path / "somefile"
    afile.write_text("x")
    cases = {
        "": "empty",
        "   ": "empty",
        str(afile): "exists and is not a folder",
        f"{afile}/runs": "is not a folder, so",
        f"file://{afile}/runs": "is not a folder, so",
        "file://runs": "needs an absolute path",
        "file:/tmp/runs": "needs '://'",
        "s3:bucket/runs": "needs '://'",
        "ftp://host/runs": "unknown scheme 'ftp'",
        "S3://bucket/runs": "unknown scheme 'S3'",
        "s3:///runs": "needs a bucket",
        "gs://": "needs a bucket",
    }
    for value, expect in cases.items():
        with pytest.raises(ConfigError) as e:
            check_storage(value)
        msg = str(e.value)
        assert msg.startswith(f"--storage {value!r}: ") and expect in msg, (value, msg)
        assert "\n" not in msg
    assert tree(tmp_path) == {"somefile"}


@pytest.mark.parametrize("value", ["runs", "s3://bucket/runs", "gs://b", "file:///tmp/ups-runs", "hdfs://nn:8020/r"])
def test_good_storage_values(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    assert check_storage(value) == value
    assert tree(tmp_path) == set()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only-mode folder")
def test_unwritable_storage(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            check_storage(str(ro / "runs"))
    finally:
        ro.chmod(0o700)


def test_unwritable_storage_as_any_user(tmp_path, monkeypatch):
    """The same rule where chmod cannot show it (root): the nearest existing folder must be writable."""
    monkeypatch.setattr(os, "access", lambda *_: False)
    with pytest.raises(ConfigError, match=r"^--storage '.*': .* is not writable$"):
        check_storage(str(tmp_path / "a" / "runs"))


def test_storage_with_credentials_is_refused_without_showing_them():
    for uri in ("s3://KEY:Sh0uldNotLeak@bucket/runs", "s3://b/runs?region=eu&secret_key=Sh0uldNotLeak"):
        with pytest.raises(ConfigError, match="holds credentials") as e:
            check_storage(uri)
        assert "Sh0uldNotLeak" not in str(e.value)
    assert check_storage("s3://b/runs?region=eu") == "s3://b/runs?region=eu"


def test_storage_errors_redact_credentials():
    with pytest.raises(ConfigError) as e:
        check_storage("ftp://KEY:SECRET@host/runs")
    assert "SECRET" not in str(e.value) and "ftp://***@host/runs" in str(e.value)


def test_run_folder_splits_and_checks(tmp_path):
    assert _cli.run_folder(f"{tmp_path}/runs/r1/") == (f"{tmp_path}/runs", "r1")
    assert _cli.run_folder("s3://b/runs/r1?region=eu") == ("s3://b/runs?region=eu", "r1")
    with pytest.raises(ConfigError, match="^--run "):
        _cli.run_folder(f"{tmp_path}/runs/..")
    with pytest.raises(ConfigError, match="^--run "):
        _cli.run_folder("")


# --- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("s3://KEY:SECRET@bucket/runs", "s3://***@bucket/runs"),
        ("s3://KEY:SE/CRET@bucket/runs", "s3://***@bucket/runs"),  # an unescaped '/' in the secret
        ("s3://KEY:SE#CRET@bucket/runs", "s3://***@bucket/runs"),
        ("s3://KEY:SE?CRET@bucket/runs", "s3://***@bucket/runs"),  # a "?" in the secret
        ("s3://KEY@bucket", "s3://***@bucket"),
        (
            "s3://b/r?region=eu&access_key=A&secret_key=S&session_token=T&Password=P&credential_file=C",
            "s3://b/r?region=eu&access_key=***&secret_key=***&session_token=***&Password=***&credential_file=***",
        ),
        (
            "s3://b/r?endpoint_override=http://h:9000&scheme=http",
            "s3://b/r?endpoint_override=http://h:9000&scheme=http",
        ),
        ("hdfs://namenode:8020/runs@2024", "hdfs://namenode:8020/runs@2024"),  # a port, not a secret
        ("gs://bucket/runs", "gs://bucket/runs"),
        ("/local/runs", "/local/runs"),
        ("runs", "runs"),
    ],
)
def test_redact(uri, shown):
    assert redact(uri) == shown


# --- entry points -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job, args, flag",
    [
        ("train", ["--name", "../../x"], "--name"),
        ("tune", ["--name", "a/b"], "--name"),
        ("train", ["--storage", "SOMEFILE/runs"], "--storage"),
        (
            "train",
            ["--storage", "s3://KEY:Sh0uldNotLeak@b/runs?x=1", "--set", "gate.family=../f"],
            "--storage",
        ),  # refused: credentials belong in the environment
    ],
)
def test_entry_points_exit_2_with_one_line_and_write_nothing(tmp_path, job, args, flag):
    work = tmp_path / "work"
    work.mkdir()
    (work / "SOMEFILE").write_text("")
    args = [a.replace("SOMEFILE", str(work / "SOMEFILE")) for a in args]
    before = tree(tmp_path)
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}  # no Ray listens there
    r = subprocess.run(
        [sys.executable, "-m", f"ray_jobs.{job}", "--config", str(ROOT / "configs" / "smoke.yaml"),
         "--storage", str(work / "runs"), *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert flag in lines[0] and "Sh0uldNotLeak" not in r.stderr
    assert tree(tmp_path) == before  # nothing under --storage, nothing beside it


def test_redact_all_walks_records():
    record = {"run": "s3://K:S@b/r", "trials": [{"run": "gs://b/t?token=T"}], "n": 1, "local": "/x/y"}
    shown = {"run": "s3://***@b/r", "trials": [{"run": "gs://b/t?token=***"}], "n": 1, "local": "/x/y"}
    assert redact_all(record) == shown
