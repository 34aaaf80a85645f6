"""The model registry: versions of named models, their metrics, and aliases (production, ...).

Metadata lives in SQLite (stdlib, one file, safe for several readers); artifacts are copied
into `ROOT/artifacts/NAME/VERSION/` with their content hashes recorded. Only safetensors,
ONNX, JSON and tokenizer files are accepted: nothing that needs pickle to load.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.workspace import hash_file

ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".onnx"}
SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS routing (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_history (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    old_version INTEGER,
    new_version INTEGER NOT NULL,
    changed_at REAL NOT NULL
);
"""


class RegistryError(LmforgeError):
    pass


@dataclass(frozen=True)
class AliasChange:
    name: str
    alias: str
    old_version: int | None  # None: the alias did not exist before
    new_version: int
    changed_at: float


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path
    content_hash: str
    metrics: dict[str, Any]
    tags: dict[str, Any]
    created_at: float
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServingSnapshot:
    """What a server needs to route: every alias and routing policy, read in one transaction."""

    aliases: dict[str, dict[str, int]]  # name -> alias -> version
    routing: dict[str, dict[str, Any]]  # name -> policy (JSON object)
    token: tuple[int, float]  # changes whenever an alias or a policy changes


class ModelRegistry:
    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root).resolve()
        db = self.root / "registry.sqlite"
        if not create and not db.exists():
            raise RegistryError(
                f"no model registry at {self.root} (missing registry.sqlite); "
                "train a model first, e.g. `lmforge demo` or `lmforge train CONFIG`"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = db
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self._db, timeout=30)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def register(
        self,
        name: str,
        source_dir: str | Path,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        alias: str | None = None,
    ) -> ModelVersion:
        """Copy a model folder into the registry as the next version of `name`."""
        source_dir = Path(source_dir)
        files = sorted(p for p in source_dir.iterdir() if p.is_file())
        if not files:
            raise RegistryError(f"model folder {source_dir} is empty")
        bad = [p.name for p in files if p.suffix not in ALLOWED_SUFFIXES]
        if bad:
            raise RegistryError(
                f"refusing to register {bad}: only {sorted(ALLOWED_SUFFIXES)} files are allowed"
            )
        with self._connect() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM versions WHERE name = ?", (name,)
            ).fetchone()
            version = int(row[0]) + 1
            target = self.root / "artifacts" / name / str(version)
            staging = target.with_name(f".{version}.staging")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            hashes = {}
            for f in files:
                shutil.copy2(f, staging / f.name)
                hashes[f.name] = hash_file(staging / f.name)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            content_hash = _combine(hashes)
            conn.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    str(target.relative_to(self.root)),
                    content_hash,
                    json.dumps(metrics or {}),
                    json.dumps(tags or {}),
                    time.time(),
                ),
            )
        if alias:
            self.set_alias(name, alias, version)
        return self.get(name, version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.get(name, version)  # must exist
        with self._connect() as conn:
            old = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            conn.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (name, alias, version))
            conn.execute(
                "INSERT INTO alias_history VALUES (?, ?, ?, ?, ?)",
                (name, alias, old[0] if old else None, version, time.time()),
            )

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Every alias change of `name` (optionally one alias), oldest first."""
        query = "SELECT name, alias, old_version, new_version, changed_at FROM alias_history"
        query += " WHERE name = ?" + (" AND alias = ?" if alias else "")
        args: tuple[Any, ...] = (name, alias) if alias else (name,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY rowid", args).fetchall()
        return [AliasChange(n, a, o, int(v), float(t)) for n, a, o, v, t in rows]

    def rollback(self, name: str, alias: str = "production") -> tuple[int, int]:
        """Undo the alias's latest change: point it back where it pointed before.

        One transaction, so a server resolving the alias sees the old version or the new
        one, never neither. Returns (from_version, to_version). Rolling back twice undoes
        the rollback (the history records every move).
        """
        with self._connect() as conn:
            current = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if current is None:
                raise RegistryError(f"model {name!r} has no alias {alias!r} to roll back")
            last = conn.execute(
                "SELECT old_version FROM alias_history WHERE name = ? AND alias = ? "
                "ORDER BY rowid DESC LIMIT 1",
                (name, alias),
            ).fetchone()
            previous = last[0] if last else None
            if previous is None:
                raise RegistryError(
                    f"{name!r} {alias} has pointed at v{current[0]} only; there is nothing to "
                    f"roll back to (promote another version: lmforge registry promote {name} "
                    f"VERSION --alias {alias})"
                )
            conn.execute(
                "UPDATE aliases SET version = ? WHERE name = ? AND alias = ?",
                (previous, name, alias),
            )
            conn.execute(
                "INSERT INTO alias_history VALUES (?, ?, ?, ?, ?)",
                (name, alias, current[0], previous, time.time()),
            )
        return int(current[0]), int(previous)

    def set_routing(self, name: str, policy: dict[str, Any]) -> None:
        """Store the traffic policy of `name` (validated by the server's routing module)."""
        if name not in self.names():
            raise RegistryError(f"no model {name!r} in the registry (models: {self._known()})")
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO routing VALUES (?, ?, ?)",
                (name, json.dumps(policy, sort_keys=True), time.time()),
            )

    def routing(self, name: str) -> dict[str, Any]:
        """The stored traffic policy of `name`; {} when none was set."""
        with self._connect() as conn:
            row = conn.execute("SELECT policy FROM routing WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else {}

    def remove_alias(self, name: str, alias: str) -> int:
        """Drop an alias (e.g. end a shadow run); returns the version it pointed at."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if row is None:
                raise RegistryError(f"model {name!r} has no alias {alias!r}")
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        return int(row[0])

    def snapshot(self) -> ServingSnapshot:
        """Aliases and routing of every model, consistent with each other (one read)."""
        with self._connect() as conn:
            alias_rows = conn.execute("SELECT name, alias, version FROM aliases").fetchall()
            policy_rows = conn.execute("SELECT name, policy, updated_at FROM routing").fetchall()
            last_change = conn.execute("SELECT max(rowid) FROM alias_history").fetchone()[0]
        aliases: dict[str, dict[str, int]] = {}
        for name, alias, version in alias_rows:
            aliases.setdefault(name, {})[alias] = int(version)
        routing = {name: json.loads(policy) for name, policy, _ in policy_rows}
        newest_policy = max((float(t) for _, _, t in policy_rows), default=0.0)
        # alias_history gets a row on every alias move (also rollbacks); removals are seen
        # through the alias count.
        token = (int(last_change or 0) * 1000 + len(alias_rows), newest_policy)
        return ServingSnapshot(aliases, routing, token)

    def _known(self) -> str:
        return ", ".join(self.names()) or "none"

    def update_metrics(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        current = self.get(name, version).metrics
        current.update(metrics)
        with self._connect() as conn:
            conn.execute(
                "UPDATE versions SET metrics = ? WHERE name = ? AND version = ?",
                (json.dumps(current), name, version),
            )

    def get(self, name: str, version: int) -> ModelVersion:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT name, version, path, content_hash, metrics, tags, created_at "
                "FROM versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            aliases = conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                (name, version),
            ).fetchall()
        if row is None:
            known = ", ".join(str(v.version) for v in self.versions(name)) or "none"
            raise RegistryError(f"model {name!r} has no version {version} (versions: {known})")
        return self._row(row, tuple(a[0] for a in aliases))

    def resolve(self, name: str | None = None, ref: str | int = "production") -> ModelVersion:
        """Find a version by alias or number; `name=None` means the only model there is."""
        name = name or self._only_name()
        if isinstance(ref, int) or str(ref).isdigit():
            return self.get(name, int(ref))
        with self._connect() as conn:
            row = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, ref)
            ).fetchone()
        if row is None:
            raise RegistryError(
                f"model {name!r} has no alias {ref!r}; "
                f"promote a version first: lmforge registry promote {name} VERSION --alias {ref}"
            )
        return self.get(name, int(row[0]))

    def names(self) -> list[str]:
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT name FROM versions ORDER BY name").fetchall()
        return [r[0] for r in rows]

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        query = "SELECT name, version FROM versions"
        args: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            args = (name,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY name, version", args).fetchall()
        return [self.get(n, v) for n, v in rows]

    def _only_name(self) -> str:
        names = self.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise RegistryError(f"the registry at {self.root} holds no model yet")
        raise RegistryError(f"the registry holds several models ({', '.join(names)}); name one")

    def _row(self, row: tuple[Any, ...], aliases: tuple[str, ...]) -> ModelVersion:
        name, version, path, content_hash, metrics, tags, created_at = row
        return ModelVersion(
            name=name,
            version=int(version),
            path=self.root / path,
            content_hash=content_hash,
            metrics=json.loads(metrics),
            tags=json.loads(tags),
            created_at=float(created_at),
            aliases=aliases,
        )


def _combine(hashes: dict[str, str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}:{hashes[name]}\n".encode())
    return digest.hexdigest()
