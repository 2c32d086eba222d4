"""Say which of the supported Pythons this machine lacks, so a green tox run is not read as all.

tox skips an environment whose interpreter it cannot find and still ends with
"congratulations". This runs last in tox's envlist and names each Python the
suite did not run on, with how to provide it. CI sets
TOX_SKIP_MISSING_INTERPRETERS=false, so there a missing Python fails instead.
"""

from __future__ import annotations

import subprocess
import sys

SUPPORTED = ("3.11", "3.12", "3.13")


def found(version: str) -> bool:
    """Whether ``python<version>`` runs here, as tox would find it on PATH."""
    try:
        ran = subprocess.run(
            [f"python{version}", "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ran.returncode == 0 and ran.stdout.strip() == str(tuple(map(int, version.split("."))))


def main() -> int:
    missing = [version for version in SUPPORTED if not found(version)]
    if not missing:
        print(f"every supported Python is here to test on: {', '.join(SUPPORTED)}")
        return 0
    names = ", ".join(f"python{v}" for v in missing)
    print(
        f"NOT TESTED on Python {', '.join(missing)}: no {names} on PATH, so tox skipped "
        f"py{', py'.join(v.replace('.', '') for v in missing)}. Install it (your system's "
        "package, or `pyenv install X.Y` with its bin folder on PATH) to test there; "
        "CI fails rather than skips.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
