"""The connection every part of the store shares."""

from __future__ import annotations

from pathlib import Path

import aiosqlite


class Base:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
