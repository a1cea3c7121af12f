"""The ids an operator types: ``wh_<n>`` for a stored webhook (what intake answers and the
logs carry), ``dl_<n>`` for a dead letter. Each command that takes an id takes both kinds and
says what to run when the other kind names something else; a bare number is read as the
command's own kind (what older output showed)."""

from __future__ import annotations

import argparse

from bridge.store.rows import MAX_ROW_DIGITS

WEBHOOK_PREFIX = "wh_"
LETTER_PREFIX = "dl_"


def letter_ref(letter_id: int) -> str:
    return f"{LETTER_PREFIX}{letter_id}"


def parse(text: str) -> tuple[str, int]:
    """``("dl", 12)`` for ``dl_12``, ``("wh", 5)`` for ``wh_5``, ``("", 7)`` for ``7``."""
    kind = ""
    for prefix in (WEBHOOK_PREFIX, LETTER_PREFIX):
        if text.startswith(prefix):
            kind, text = prefix[:-1], text[len(prefix) :]
    if not text.isdigit() or len(text) > MAX_ROW_DIGITS:
        raise argparse.ArgumentTypeError(
            f"not an id: {text!r} (a dead letter is dl_12, a webhook wh_5)"
        )
    return kind, int(text)


def any_id(text: str) -> tuple[str, int]:
    """argparse ``type=``: either kind, checked here so a typo is a usage error (exit 2)."""
    return parse(text.strip())
