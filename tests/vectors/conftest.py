"""Shared helpers for the vector test modules: one module per vector file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def load(name: str) -> list[dict[str, Any]]:
    """The cases of ``tests/vectors/data/<name>.json``."""
    with open(DATA / f"{name}.json", encoding="utf-8") as f:
        cases: list[dict[str, Any]] = json.load(f)
    return cases


def case_id(case: dict[str, Any]) -> str:
    """A readable pytest id: the cipher suite when the case has one."""
    suite = case.get("cipher_suite")
    return f"suite{suite}" if suite is not None else "case"
