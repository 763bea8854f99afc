"""A persistent reply cache: one sqlite3 file, key = sha256 of the request's canonical JSON."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from typing import Any, Mapping


def cache_key(parts: Mapping[str, Any]) -> str:
    """Canonical key of a request (model, query, sampling params, ...)."""
    blob = json.dumps(dict(parts), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    """Key -> JSON object, persisted on disk. Each put is its own transaction (atomic), so a
    killed run leaves every finished reply readable; safe to share between threads."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        blob = json.dumps(dict(value), ensure_ascii=False)
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO replies (key, value) VALUES (?, ?)", (key, blob))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"ReplyCache({self.path!r})"
