"""tools/pythons.py: a run of the suite names the supported Pythons it could not test on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS

# Every test here starts processes.
pytestmark = pytest.mark.subprocess

SCRIPT = TESTS.parent / "tools" / "pythons.py"


def run_with_only(tmp_path: Path, *versions: str) -> subprocess.CompletedProcess[str]:
    """Run the script with a PATH on which only ``python<version>`` for each of ``versions`` is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for version in versions:
        # This interpreter, answering as the version asked for.
        fake = bin_dir / f"python{version}"
        major, minor = version.split(".")
        fake.write_text(f"#!/bin/sh\necho '({major}, {minor})'\n")
        fake.chmod(0o755)
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(bin_dir)},
        timeout=60,
        check=False,
    )


def test_each_missing_python_is_named_with_how_to_provide_it(tmp_path: Path) -> None:
    ran = run_with_only(tmp_path, "3.11")

    assert ran.returncode == 0
    assert ran.stderr.startswith("NOT TESTED on Python 3.12, 3.13: no python3.12, python3.13")
    assert "tox skipped py312, py313" in ran.stderr
    assert "pyenv install" in ran.stderr


def test_with_every_python_present_it_says_so(tmp_path: Path) -> None:
    ran = run_with_only(tmp_path, "3.11", "3.12", "3.13")

    assert (ran.returncode, ran.stderr) == (0, "")
    assert "every supported Python is here" in ran.stdout
