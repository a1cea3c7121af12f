"""Sample Synap webhook bodies, one per event code, shaped after Synap's documented payloads.

Why they ship inside the package: ``synap-bridge try CODE`` posts (or maps offline) the sample
of a code, so an operator can see what a webhook becomes without Synap; the same files are the
tests' fixtures, so what ``try`` shows is what the tests check. ``<code>.json`` per code,
including ``assignment.complete`` (Synap's API sample spelling) and the configurable "exam
results released" code under its default name.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

SUFFIX = ".json"


def _folder() -> Traversable:
    return resources.files(__name__)


def codes() -> list[str]:
    """Every code with a sample, sorted."""
    return sorted(
        entry.name.removesuffix(SUFFIX)
        for entry in _folder().iterdir()
        if entry.name.endswith(SUFFIX)
    )


def path(code: str) -> Traversable:
    """The sample's file (``KeyError`` when there is none for ``code``)."""
    if code not in codes():
        raise KeyError(code)
    return _folder() / f"{code}{SUFFIX}"


def raw(code: str) -> bytes:
    """The sample's bytes as shipped (``KeyError`` when there is none for ``code``)."""
    return path(code).read_bytes()
