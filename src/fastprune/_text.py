"""Wording shared by the commands' one-line messages."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """``count`` with ``noun``, plural unless the count is one: '1 epoch', '3 epochs'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
