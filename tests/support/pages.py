"""The README and docs/ as data: their fenced blocks, tables, headings and links."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The pages whose snippets and commands are tested.
PAGES: tuple[Path, ...] = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
#: The pages whose links are followed: those, and the ones they link to.
LINKING: tuple[Path, ...] = (
    *PAGES,
    ROOT / "benchmarks" / "README.md",
    ROOT / "benchmarks" / "HISTORY.md",
)

_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts, its language, its code."""

    page: Path
    line: int
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 1, m.group(2), textwrap.dedent(m.group(3)))
        for m in _FENCE.finditer(text)
    ]


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def prose(page: Path) -> str:
    """The page without its fenced blocks and inline code: what a reader clicks."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", page.read_text()))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, no punctuation, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return _LINK.findall(prose(page))


def table_under(page: Path, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after ``heading``, header row excluded."""
    text = _FENCE.sub("", page.read_text())
    start = re.search(rf"^#+ {re.escape(heading)} *$", text, re.M)
    assert start is not None, f"{page.name} has no heading {heading!r}"
    lines = text[start.end() :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return table
