"""Run the README's model example as its author would: in an empty folder outside the checkout.

`tox -e kit` installs the checkout with the extra the README's install command
names, in an environment of its own, and runs this. It writes each Python
block of the README's "Writing a model" section whose first line is
``# <path>.py`` to that path in a new temporary folder, checks that the
section's install command installs emotion with the ``testing`` extra and
nothing else, and runs the section's other commands there (``.venv/bin/X``
is this environment's X). Arguments are added to the pytest command. Exits
as that command exits.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Writing a model"
EXTRA = "testing"
#: The install command: creates .venv and installs into it; tox did both.
INSTALL = re.compile(r"(?:^| && )\.venv/bin/pip install (?:-q )?\"\$\{EMOTION\}\[([\w,]+)\]\"")

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
_FILE = re.compile(r"# ([\w./-]+\.py)\n")


def section(readme: str) -> str:
    """The text of the README's "Writing a model" section."""
    start = readme.index(f"\n{HEADING}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def files(text: str) -> dict[str, str]:
    """Each Python block that names its file on its first line: path, and the block."""
    found = {}
    for lang, code in _FENCE.findall(text):
        if lang == "python" and (named := _FILE.match(code)):
            found[named.group(1)] = code
    return found


def commands(text: str) -> tuple[str, list[list[str]]]:
    """The install command, and the commands after it, of the block that installs the extra."""
    for lang, code in _FENCE.findall(text):
        lines = [line for line in code.splitlines() if line and not line.startswith("#")]
        if lang == "sh" and lines and INSTALL.search(lines[0]):
            return lines[0], [shlex.split(line) for line in lines[1:]]
    raise SystemExit(f"README.md, {HEADING}: no sh block starts with {INSTALL.pattern}")


def _extras(install: str) -> list[str]:
    found = INSTALL.search(install)
    return found.group(1).split(",") if found else []


def main(pytest_args: list[str]) -> int:
    text = section((ROOT / "README.md").read_text())
    install, then = commands(text)
    extras = set(_extras(install))
    if extras != {EXTRA}:
        raise SystemExit(f"README.md installs emotion[{','.join(sorted(extras))}], not [{EXTRA}]")
    folder = Path(tempfile.mkdtemp(prefix="emotion-readme-"))
    if folder.is_relative_to(ROOT):
        raise SystemExit(f"{folder} is inside the checkout")
    for path, source in files(text).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(source)
        print(f"wrote {path}")
    print(f"installed by tox: {install}")
    # Nothing of the checkout reaches the run: not tests/ (its conftest, its helpers), nor
    # tox's TOX_ENV_DIR (pytest would keep its cache there).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TOX_"))}
    paths = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [p for p in paths if Path(p).resolve() != ROOT / "tests"]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    code = 0
    for words in then:
        program = Path(sys.executable).parent / words[0].removeprefix(".venv/bin/")
        args = [*words[1:], *pytest_args] if program.name == "pytest" else words[1:]
        print(f"in {folder}: {shlex.join([words[0], *args])}", flush=True)
        code = subprocess.run([str(program), *args], cwd=folder, env=env, check=False).returncode
        if code:
            print(f"left {folder} as it was")
            return code
    shutil.rmtree(folder)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
