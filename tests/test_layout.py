"""The stage layout holds: no backend detail leaks out of ``bridge/store``.

The backend is chosen in one place (``bridge.store.factory``), which also answers "may this
serve start" and "how much disk is left"; nothing else imports a backend module, sqlite3 or
asyncpg. No thread remains in delivery (it runs on the event loop).
"""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parent.parent / "bridge"
BACKENDS = ("bridge.store.sqlite", "bridge.store.postgres", "sqlite3", "asyncpg")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_backend_module_is_imported_outside_the_store() -> None:
    leaks = {
        str(path.relative_to(BRIDGE)): sorted(
            name for name in imported(path) if name.startswith(BACKENDS)
        )
        for path in BRIDGE.rglob("*.py")
        if "store" not in path.relative_to(BRIDGE).parts
    }
    assert {path: names for path, names in leaks.items() if names} == {}


def test_no_thread_in_delivery() -> None:
    for path in (BRIDGE / "delivery").rglob("*.py"):
        assert not imported(path) & {"threading", "concurrent.futures"}, path
