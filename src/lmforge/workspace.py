"""The run directory: one folder per stage, a manifest, atomic writes, completion markers.

Layout (see docs/workspace.md):

    WORKDIR/manifest.json       one entry per stage: inputs + hashes, outputs, config hash, timing
    WORKDIR/<stage>/            what the stage wrote; `_SUCCESS` marks it complete
    WORKDIR/<stage>/summary.json the stage's numbers, read by the report
    WORKDIR/registry/           the model registry
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

SUCCESS_MARKER = "_SUCCESS"


def _default_mode() -> int:
    """The mode a plain open() would give: mkstemp's 0600 would hide outputs from other users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temp file in the same folder and rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: strict JSON readers reject them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(_finite(obj), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path`; on success it is renamed onto `path`.

    For writers that want a file name (pyarrow, safetensors, sqlite backups).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of files (hidden files skipped)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            out.append(p)
    return out


def hash_inputs(paths: Iterable[str | Path]) -> dict[str, str]:
    """Content hash of every input file, keyed by path."""
    return {str(f): hash_file(f) for f in list_files(paths)}


class Workspace:
    """A run directory. Stages ask it for their folder and record themselves in the manifest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    def stage_dir(self, stage: str, create: bool = True) -> Path:
        path = self.root / stage
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            manifest = read_json(self.manifest_path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
            raise LmforgeError(
                f"{self.manifest_path} is damaged; delete it to rerun every stage of this run"
            )
        return manifest

    def relative_inputs(self, inputs: dict[str, str]) -> dict[str, str]:
        """Key files inside the run by their path within it, so a moved run stays up to date."""
        out = {}
        for path, digest in inputs.items():
            rel = os.path.relpath(path, self.root)
            out[path if rel.startswith("..") else rel] = digest
        return out

    def is_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage, create=False) / SUCCESS_MARKER).exists()

    def stage_entry(self, stage: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(stage)

    def is_up_to_date(self, stage: str, inputs: dict[str, str], config_hash: str) -> bool:
        """Complete, same config and inputs, and every recorded output still on disk."""
        entry = self.stage_entry(stage)
        return (
            self.is_complete(stage)
            and entry is not None
            and entry.get("status") == "complete"
            and entry.get("config_hash") == config_hash
            and entry.get("inputs") == inputs
            and all((self.root / out).exists() for out in entry.get("outputs", []))
        )

    def mark_started(self, stage: str, inputs: dict[str, str], config_hash: str) -> float:
        # The old summary goes too: a report must never mix a rerun's numbers with stale ones.
        (self.stage_dir(stage) / SUCCESS_MARKER).unlink(missing_ok=True)
        (self.stage_dir(stage) / "summary.json").unlink(missing_ok=True)
        self._update(
            stage,
            {
                "stage": stage,
                "status": "running",
                "inputs": inputs,
                "config_hash": config_hash,
                "started_at": time.time(),
            },
        )
        return time.perf_counter()

    def mark_complete(
        self, stage: str, outputs: Iterable[str | Path], started: float, summary: dict[str, Any]
    ) -> None:
        seconds = time.perf_counter() - started
        atomic_write_json(self.stage_dir(stage) / "summary.json", summary)
        rel = [os.path.relpath(Path(o).absolute(), self.root) for o in outputs]
        self._update(
            stage,
            {"status": "complete", "outputs": rel, "finished_at": time.time(), "seconds": seconds},
        )
        atomic_write_text(self.stage_dir(stage) / SUCCESS_MARKER, f"{time.time()}\n")

    def mark_failed(self, stage: str, error: str) -> None:
        self._update(stage, {"status": "failed", "error": error, "finished_at": time.time()})

    def summary(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage, create=False) / "summary.json"
        return read_json(path) if path.exists() else None

    def _update(self, stage: str, fields: dict[str, Any]) -> None:
        manifest = self.manifest()
        entry = manifest["stages"].setdefault(stage, {"stage": stage})
        entry.update(fields)
        atomic_write_json(self.manifest_path, manifest)
