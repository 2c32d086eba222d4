"""README.md and docs/ stay true to the code: flag tables, command lines, tox envs, links."""

from __future__ import annotations

import configparser
import dataclasses
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from support.pages import LINKING, PAGES, ROOT, all_blocks, anchors, links, table_under

from emotion.cli import build_parser
from emotion.config import DemoOptions, PredictOptions, ServeOptions
from emotion.config.settings import Flag, flags, parse_size

DOCS = ROOT / "docs"

#: Each command's flag table: the page, and the heading it sits under.
FLAG_TABLES = {
    "serve": (ServeOptions, DOCS / "server.md", "Running the server"),
    "predict": (PredictOptions, DOCS / "client.md", "emotion predict"),
    "demo": (DemoOptions, DOCS / "client.md", "The demo page"),
}


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default  # MISSING for a field of an optional nested setting


def _shown_default(cell: str, flag: Flag) -> Any:
    """The value a table's default cell says, read as the CLI reads it; None for prose."""
    if literal := re.match(r"`([^`]+)`", cell):
        return flag.parse(literal.group(1))
    sizes = cell.split(" + ")
    if all(re.fullmatch(r"\d+ [KMG]iB", size) for size in sizes):
        return sum(parse_size(size.replace(" ", "")) for size in sizes)
    return None


@pytest.mark.parametrize("command", FLAG_TABLES)
def test_each_flag_table_has_a_row_per_flag_with_its_variables_and_default(command: str) -> None:
    cls, page, heading = FLAG_TABLES[command]
    rows = table_under(page, heading)
    by_flag = {name: row for row in rows for name in re.findall(r"`(--[\w-]+)`", row[0])}

    assert sorted(by_flag) == sorted(flag.name for _, flag in flags(cls)), f"{page.name}: rows"
    for field, flag in flags(cls):
        _, environment, default, *_ = by_flag[flag.name]
        for variable in (flag.env, *flag.aliases):
            assert re.search(rf"`{variable}(=1)?`", environment), f"{flag.name}: {variable}"
        if default == "off":
            assert _default(field) in (None, False, (), dataclasses.MISSING), flag.name
        elif (shown := _shown_default(default, flag)) is not None:
            assert shown == _default(field), f"{flag.name}: default {default}"


def _commands(code: str, lang: str) -> list[str]:
    """The commands a sh or console block runs: prompts and comments dropped, joined lines."""
    if lang == "console":
        lines = [line[2:] for line in code.splitlines() if line.startswith("$ ")]
    else:
        lines = code.replace("\\\n", " ").splitlines()
    return [part for line in lines for part in line.split(" && ") if part.split("#")[0].strip()]


#: Programs the suite does not run, and why; their paths are still checked.
NOT_RUN = {
    "docker": "needs Docker; tox -e lint and the tests cover what the image installs",
    "kubectl": "needs a cluster; tox -e k8s validates the manifests it applies",
    "grpcurl": "not installed here; test_readme lists the services by reflection, as grpcurl does",
}
_PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = set(_PROJECT["optional-dependencies"])
_TOX = configparser.ConfigParser()
_TOX.read(ROOT / "tox.ini")
TOX_ENVS = {s.removeprefix("testenv:") for s in _TOX.sections() if s.startswith("testenv:")}
TOX_ENVS |= {env.strip() for env in _TOX["tox"]["envlist"].split(",")}
#: Where a repository path in a command may start; other words are placeholders (photo.jpg).
TOP = ("tests/", "deploy/", "benchmarks/", "protos/", "emotion/", "docs/", "tools/")

COMMANDS = [
    pytest.param(command, id=f"{block}:{command[:40]}")
    for block in all_blocks()
    if block.lang in {"sh", "console"}
    for command in _commands(block.code, block.lang)
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_line_the_pages_show_is_real(command: str) -> None:
    words = shlex.split(command, comments=True)
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words.pop(0)  # VAR=value before the program
    program, args = words[0].removeprefix(".venv/bin/"), words[1:]
    for word in args:
        if word.startswith(TOP):
            assert (ROOT / word).exists(), word
    if program in {"python", "python3"} and args[:2] == ["-m", "emotion"]:
        program, args = "emotion", args[2:]
    if program == "emotion":
        build_parser().parse_args(args)  # a wrong flag or command exits 2
    elif program in {"python", "python3"}:
        assert args[:2] == ["-m", "venv"] or (ROOT / args[0]).is_file(), command
    elif program == "pip":
        assert args[0] == "install", command
        for extras in (re.fullmatch(r"(?:\.|\$\{EMOTION\})\[([\w,]+)\]", arg) for arg in args):
            assert extras is None or set(extras.group(1).split(",")) <= EXTRAS, command
    elif program == "pytest":
        assert args == [], command  # the model example's: test_readme runs it as tox -e kit does
    elif program == "tox":
        if "-e" in args:
            assert set(args[args.index("-e") + 1].split(",")) <= TOX_ENVS, command
    else:
        assert program in NOT_RUN, f"{command}: check it here, or say in NOT_RUN why not"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_flags_and_tox_environments_the_pages_name_exist(page: Path) -> None:
    known = {"--help", "--version"}
    known |= {flag.name for cls, _, _ in FLAG_TABLES.values() for _, flag in flags(cls)}
    text = page.read_text()

    assert set(re.findall(r"`(--[a-z][\w-]*)", text)) <= known
    for names in re.findall(r"tox -e ([\w,]+)", text):
        assert set(names.split(",")) <= TOX_ENVS, names


@pytest.mark.parametrize("page", LINKING, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    for link in links(page):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_relative_to(ROOT), f"{page.name}: {link}"
        assert target.exists(), f"{page.name}: {link}"
        if anchor:
            assert anchor in anchors(target), f"{page.name}: {link}"


def test_the_links_test_sees_links_and_anchors() -> None:
    readme = ROOT / "README.md"

    assert "docs/server.md" in links(readme)
    assert "docs/demo.png" in links(readme)
    assert "the-demo-page" in anchors(DOCS / "client.md")


def test_the_check_model_table_lists_every_property_in_the_order_checked() -> None:
    from emotion.testing import PROPERTIES

    rows = table_under(DOCS / "models.md", "Checking a model")

    assert tuple(row[0] for row in rows) == PROPERTIES
