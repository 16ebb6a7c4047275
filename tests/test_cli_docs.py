"""The README's Commands section is the CLI: every job's flags, as `--help` prints them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_flags(job: str) -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Commands") :].split("\n\n")[2]  # the usage block under the heading
    usage = re.split(r"\n    python -m ray_jobs\.", "\n" + block)
    (mine,) = [u for u in usage if u.startswith(job + " ")]
    return set(re.findall(r"--[a-z][a-z-]*", mine))


@pytest.mark.parametrize("job", ["train", "tune", "generate", "evaluate", "export", "predict"])
def test_readme_lists_exactly_the_flags_help_prints(job):
    r = subprocess.run([sys.executable, "-m", f"ray_jobs.{job}", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 0
    usage = r.stdout.split("\n\n")[0]
    helped = set(re.findall(r"--[a-z][a-z-]*", usage)) - {"--help"}
    assert readme_flags(job) == helped
