"""Data flows one way: route -> handler -> store / fan-out (STYLE.md, as in Synapse).

A route that imports a store can skip the handler's rules; a fan-out that imports a
handler reaches back up the chain. Both are read from the source (``ast``), so a lazy
import inside a function counts as much as one at the top of the module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import parley.server.api as api
import parley.server.fanout as fanout

STORAGE = "parley.server.storage"
HANDLERS = "parley.server.handlers"


def _imports(path: Path) -> set[str]:
    """Every module the file names in an import, at any depth; ``from x import y`` also
    yields ``x.y`` so importing a submodule through its package is caught too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package the file lives in
                package = path.parent.relative_to(_src()).parts
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _src() -> Path:
    return Path(api.__file__).resolve().parents[3]


def _reaches(imports: set[str], layer: str) -> list[str]:
    return sorted(m for m in imports if m == layer or m.startswith(layer + "."))


def _modules(package: ModuleType) -> list[Path]:
    assert package.__file__ is not None
    root = Path(package.__file__).resolve().parent
    found = sorted(root.rglob("*.py"))
    assert found, f"the scan must see {root}"
    return found


def test_routes_do_not_import_stores() -> None:
    offenders = {
        path.name: hits for path in _modules(api) if (hits := _reaches(_imports(path), STORAGE))
    }
    assert offenders == {}, (
        "routes call handlers; a record type a route needs is re-exported by the handler "
        "that returns it (see parley/server/api/__init__.py)"
    )


def test_fanout_does_not_import_handlers() -> None:
    offenders = {
        path.name: hits for path in _modules(fanout) if (hits := _reaches(_imports(path), HANDLERS))
    }
    assert offenders == {}


def test_the_scan_sees_every_form_of_import(tmp_path: Path) -> None:
    """The scanner itself, so a pass means something: top-level, lazy and package forms."""
    sample = tmp_path / "route.py"
    sample.write_text(
        "from parley.server import storage\n"
        "def f():\n"
        "    import parley.server.storage.keys as k\n"
        "    from parley.server.storage.queue import QueuedMessage\n"
    )
    assert _reaches(_imports(sample), STORAGE) == [
        "parley.server.storage",
        "parley.server.storage.keys",
        "parley.server.storage.queue",
        "parley.server.storage.queue.QueuedMessage",
    ]
    assert _reaches({"parley.server.storage_extra"}, STORAGE) == []
