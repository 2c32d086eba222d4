"""The package's layout as a specification: which part may import which, no cycles, light imports.

Imports are read from the source (every ``import``, module level or not, and every
``importlib.import_module("emotion....")``), so a cycle hidden in a function or
behind importlib is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import emotion

PACKAGE = Path(emotion.__file__).parent

#: Each part of emotion, and the parts it may import. A part is a top-level
#: module or package; the arrows point one way, from the callers down.
MAY_IMPORT: dict[str, set[str]] = {
    "_generated": set(),
    "security": set(),
    "errors": set(),
    "codec": set(),
    "contract": {"_generated"},
    "config": {"security"},
    "decode": {"config", "contract"},
    "model": {"codec", "contract"},
    "runtime": {"config"},
    "models": {"contract", "model"},
    "transport": {"codec", "config"},
    "observability": set(),
    # Pure Python on boxes and probabilities: serving runs it over a stream's answers.
    "tracking": set(),
    "inference": {"codec", "config", "contract", "decode", "model", "observability", "runtime"},
    "serving": {
        "codec",
        "config",
        "contract",
        "decode",
        "errors",
        "inference",
        "model",
        "observability",
        "runtime",
        "security",
        "tracking",
        "transport",
    },
    "supervision": {
        "config",
        "contract",
        "model",
        "observability",
        "runtime",
        "serving",
        "inference",
    },
    "client": {"codec", "config", "contract", "decode", "errors", "observability", "transport"},
    "testing": {"client", "config", "contract", "inference", "model", "observability", "serving"},
    # Loaded by every pytest where emotion is installed: it imports nothing of emotion's.
    "pytest_plugin": set(),
    "cli": {
        "client",
        "config",
        "model",
        "runtime",
        "security",
        "serving",
        "supervision",
    },
    "__main__": {"cli"},
    "__init__": {"client", "codec", "config", "contract", "model", "serving"},
}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        if "_generated" in relative.parts:
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        yield ".".join(parts), path


def imported(path: Path) -> set[str]:
    """The emotion modules ``path`` names in an import, wherever the import stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return {name for name in names if name == "emotion" or name.startswith("emotion.")}


def graph() -> dict[str, set[str]]:
    known = dict(modules())
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        edges[name] = {target for target in imported(path) if target in known} - {name}
    return edges


def part(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_part_is_declared() -> None:
    assert {part(module) for module in graph()} <= set(MAY_IMPORT) - {"_generated"}


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if part(target) != part(module) and part(target) not in MAY_IMPORT[part(module)]
    )
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(edges):
        if cycle := visit(node):
            return cycle
    return None


def test_no_module_imports_itself_back_through_others() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_and_named() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def loaded_after(statement: str) -> set[str]:
    """The emotion and OpenTelemetry modules a fresh interpreter holds after ``statement``."""
    check = (
        f"import sys\n{statement}\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('emotion', 'opentelemetry'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(out.split())


SERVER_SIDE = ("emotion.serving", "emotion.supervision", "emotion.inference", "opentelemetry")


@pytest.mark.parametrize("statement", ["import emotion", "from emotion import Client"])
@pytest.mark.subprocess
def test_a_client_program_loads_nothing_of_the_server(statement: str) -> None:
    loaded = loaded_after(statement)
    assert not {m for m in loaded if m.startswith(SERVER_SIDE)}
    assert not {"emotion.transport.server", "emotion.transport.connection"} & loaded


@pytest.mark.subprocess
def test_importing_the_package_loads_only_the_package() -> None:
    assert loaded_after("import emotion") == {"emotion"}


@pytest.mark.subprocess
def test_an_inference_process_loads_what_it_runs_and_no_server() -> None:
    loaded = loaded_after("import emotion.inference.process_main")
    assert "emotion.decode" in loaded
    assert "emotion.model" in loaded
    assert not {m for m in loaded if m.startswith((*SERVER_SIDE[:2], "emotion.transport"))}
    assert not {m for m in loaded if m.startswith("emotion.observability")}
