"""Test tiers: which tests start processes or need PostgreSQL, marked without a list to keep.

``make test-fast`` runs ``-m "not process and not postgres and not image and not browser"``
(units, mapping, the contract suite on SQLite); ``make test`` runs everything. The marks come
from what a test uses, found when pytest collects it:

* ``postgres``: the ``postgres`` fixture anywhere in its fixture closure, a parameter named
  ``postgres`` (the contract suite's backends), or ``pgcluster`` in its code.
* ``process``: it starts a subprocess (the real ``serve`` or CLI, git, promtool, ...): its own
  code, or a function, method or fixture of its module that it calls, directly or through
  another, mentions :data:`PROCESS_SIGNS`.
* ``image`` and ``browser`` are set by hand (``pytestmark``) where a module needs them.

The guard in tests/conftest.py keeps this honest: a test that starts a process without the
``process`` (or ``postgres``/``image``) mark fails, naming what it started.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import pytest

#: Marks that take a test out of the fast tier (registered in pyproject.toml).
TIERS = ("process", "postgres", "image", "browser")
FAST = " and ".join(f"not {mark}" for mark in TIERS)
PROCESS_SIGNS = ("subprocess", "BridgeProcess", "Popen", "create_subprocess_", "Serve(")
POSTGRES_SIGNS = ("pgcluster", "postgres.new_database")

_STARTERS: dict[tuple[str, str], frozenset[str]] = {}


def _source(obj: Any) -> str:
    unwrap = getattr(obj, "_get_wrapped_function", None)  # a fixture: the function it wraps
    if unwrap is not None:
        obj = unwrap()
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _definitions(module: ModuleType) -> dict[str, str]:
    """Source of every function, class (with its methods) and fixture defined in ``module``."""
    out: dict[str, str] = {}
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        text = _source(obj)
        if text:
            out[name] = text
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member):
                    out.setdefault(attr, _source(member))
    return out


def _reaching(module: ModuleType, signs: Iterable[str]) -> frozenset[str]:
    """Names in ``module`` whose code mentions a sign, directly or through another such name."""
    key = (module.__name__, ",".join(signs))
    if key in _STARTERS:
        return _STARTERS[key]
    defs = _definitions(module)
    found = {name for name, text in defs.items() if any(sign in text for sign in signs)}
    grew = True
    while grew:
        grew = False
        for name, text in defs.items():
            if name not in found and any(re.search(rf"\b{re.escape(s)}\b", text) for s in found):
                found.add(name)
                grew = True
    _STARTERS[key] = frozenset(found)
    return _STARTERS[key]


def _uses(item: pytest.Function, signs: Iterable[str]) -> bool:
    signs = tuple(signs)
    reach = _reaching(item.module, signs)
    if reach & set(item.fixturenames):
        return True
    text = _source(item.function)
    if any(sign in text for sign in signs):
        return True
    return any(re.search(rf"\b{re.escape(name)}\b", text) for name in reach)


def _postgres(item: pytest.Function) -> bool:
    if "postgres" in item.fixturenames:
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "postgres" in callspec.params.values():
        return True
    return _uses(item, POSTGRES_SIGNS)


CHECKS: dict[str, Callable[[pytest.Function], bool]] = {
    "postgres": _postgres,
    "process": lambda item: _uses(item, PROCESS_SIGNS),
}


def mark(items: Iterable[pytest.Item]) -> None:
    """Add the tier marks each collected test earns (pytest_collection_modifyitems)."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        for name, check in CHECKS.items():
            if item.get_closest_marker(name) is None and check(item):
                item.add_marker(name)
