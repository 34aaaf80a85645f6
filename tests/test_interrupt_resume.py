"""Ctrl-C during a run stops cleanly; running the same command again resumes training."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

CONFIG = """
workdir: {workdir}
corpus: {{docs: 400, seed: 1}}
train:
  max_steps: 400
  checkpoint_every: 20
  eval_every: 200
  tokenizer: {{vocab_size: 500}}
  model: {{d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, max_len: 48}}
"""


def start(config, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge", "run", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A test run started in the background by a shell inherits SIGINT ignored, and Python
        # then installs no Ctrl-C handler: give the child the default disposition back.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(400)
def test_ctrl_c_during_training_then_rerun_resumes(tmp_path):
    workdir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG.format(workdir=workdir))
    proc = start(config, "--only", "corpus", "--only", "data", "--only", "train")
    checkpoints = workdir / "train" / "checkpoints"
    deadline = time.monotonic() + 200  # a loaded CI machine needs a while for corpus + data
    started = False
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoints.exists() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
            started = True
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be interrupted"
    if not started:
        proc.kill()
        pytest.fail("training wrote no checkpoint within 200 s; nothing to interrupt yet")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; rerun the same command" in err
    assert "Traceback" not in err
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "failed"

    rerun = start(config, "--only", "corpus", "--only", "data", "--only", "train")
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err[-2000:]
    assert "corpus: up to date, skipped" in out and "data: up to date, skipped" in out
    summary = json.loads((workdir / "train" / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 20
    assert summary["steps"] == 400
