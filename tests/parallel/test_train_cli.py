"""`lmforge train CONFIG --nproc N --out RUN`: torchrun launch, kill -9 of a rank, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_ranks import fit_single, train_rows

from lmforge.train.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny-lm.yaml"
SMALL = [
    "data.docs=300",
    "data.seq_len=16",
    "data.vocab_size=300",
    "model.overrides.d_model=32",
    "model.overrides.n_layers=2",
    "train.global_batch_size=8",
    "train.eval_every=0",
    "train.warmup_steps=0",
]


def _cmd(out: Path, nproc: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "lmforge", "train", str(CONFIG), "--nproc", str(nproc)]
    cmd += ["--out", str(out)]
    for item in SMALL + extra:
        cmd += ["--set", item]
    return cmd


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _wait_for_step(out: Path, step: int, proc: subprocess.Popen, limit: float = 150.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        path = out / "metrics.jsonl"
        if path.exists() and any(r["step"] >= step for r in _rows(path)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} never appeared in {out}/metrics.jsonl")


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return [r for r in rows if r.get("kind") == "train"]


def _rank_pid(root_pid: int, rank: int) -> int:
    """The pid of the worker that torchrun started with RANK=rank, under `root_pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    stack = list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
        stack.extend(children.get(pid, []))
    raise LookupError(f"no rank {rank} under pid {root_pid}")


def _reference(tmp_path: Path, steps: int, extra: list[str]) -> list[float]:
    cfg = load_run_config(CONFIG, [*SMALL, f"train.max_steps={steps}", *extra])
    return fit_single(cfg.model_dump(mode="json"), tmp_path / "reference")


@pytest.mark.timeout(400)
def test_a_killed_rank_then_relaunch_resumes_the_same_run(tmp_path):
    extra = ["train.max_steps=40", "train.checkpoint_every=2", "parallel.dp_shard=2"]
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, 2, extra), env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(out, 3, proc)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "torchrun must report the lost rank"
    done = max(r["step"] for r in _rows(out / "metrics.jsonl"))
    assert done < 40, "the kill came too late to interrupt the run"

    again = subprocess.run(
        _cmd(out, 2, extra), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed at step" in again.stderr
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    reference = _reference(tmp_path, 40, [])
    assert [r["loss"] for r in rows] == pytest.approx(reference, abs=1e-5)
    assert (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == 40


@pytest.mark.timeout(300)
def test_sigterm_saves_a_checkpoint_and_a_rerun_finishes(tmp_path):
    extra = ["train.max_steps=60", "train.checkpoint_every=0"]
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, 1, extra), env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(out, 3, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM: saved" in err
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(saved) == 1 and saved[0] != "step-000060"

    again = subprocess.run(
        _cmd(out, 1, extra), env=_env(), capture_output=True, text=True, timeout=240
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in train_rows(out)] == list(range(1, 61))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["parallel.dp_shard=2", "parallel.tp=2"], "must equal the world size"),
        (["parallel.tp=3"], "not divisible by dp_replicate x tp x pp"),
        (["parallel.dp_shard=2", "train.global_batch_size=9"], "not divisible by dp=2"),
        (["parallel.pp_schedule=zigzag"], "parallel.pp_schedule"),
        (["train.precision=fp8"], "train.precision"),
        (["data.source=/nonexistent/reviews.csv"], "training data file not found"),
    ],
)
def test_layout_mistakes_are_one_line_errors(tmp_path, sets, message):
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        "train",
        str(CONFIG),
        "--nproc",
        "2",
        "--out",
        str(tmp_path),
    ]
    for item in sets:
        cmd += ["--set", item]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_nproc_with_a_pipeline_config_is_refused(tmp_path):
    demo = ROOT / "configs" / "demo-quick.yaml"
    cmd = [sys.executable, "-m", "lmforge", "train", str(demo), "--nproc", "2"]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "training-run config" in result.stderr
