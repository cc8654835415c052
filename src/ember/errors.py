"""Errors that Ember reports to a user as one line (the CLI turns them into exit code 2)."""

from __future__ import annotations

from pathlib import Path


class EmberInputError(Exception):
    """Bad input: names the file, the problem and the fix in one line."""

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        tail = f" — {fix}" if fix else ""
        super().__init__(f"{where}{problem}{tail}")
