"""The isolated backend: a model in a child process at idle priority, answering over a pipe."""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import pytest

from lmforge.serve import isolated
from lmforge.serve.backends import BackendError, load_backend
from lmforge.serve.isolated import IsolatedBackend, read_message, write_message

TEXTS = ["great food, fast delivery", "cold and late", "", "ok " * 300, "不错，很好吃"]


@pytest.fixture(scope="module")
def isolated_backend(tiny_model_dir):
    backend = IsolatedBackend(tiny_model_dir, threads=1)
    yield backend
    backend.close()


def test_answers_exactly_what_the_in_process_backend_does(isolated_backend, tiny_model_dir):
    local = load_backend(tiny_model_dir, threads=1)
    assert isolated_backend.kind == local.kind
    assert isolated_backend.labels == local.labels
    got = isolated_backend.predict(TEXTS)
    want = local.predict(TEXTS)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-6)
    assert isolated_backend.predict([]) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux-only")
def test_child_runs_at_idle_priority_with_its_own_pid(isolated_backend):
    pid = isolated_backend.pid
    assert pid is not None and pid != os.getpid()
    assert isolated_backend.priority == "idle"
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    # Threads the model started after the switch inherit it (torch's intra-op pool).
    for tid in os.listdir(f"/proc/{pid}/task"):
        assert os.sched_getscheduler(int(tid)) == os.SCHED_IDLE


def test_a_killed_child_is_replaced_on_the_next_call(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(isolated, "RESTART_BACKOFF_S", 0.0)
    backend = IsolatedBackend(tiny_model_dir, threads=1)
    try:
        first = backend.predict(TEXTS[:2])
        old_pid = backend.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        _wait_until_gone(backend)
        again = backend.predict(TEXTS[:2])  # restarted
        assert backend.pid not in (None, old_pid)
        assert backend.restarts == 1
        assert [r["label"] for r in again] == [r["label"] for r in first]
    finally:
        backend.close()
    assert backend.pid is None


def test_restart_waits_for_the_backoff(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(isolated, "RESTART_BACKOFF_S", 3600.0)
    backend = IsolatedBackend(tiny_model_dir, threads=1)
    try:
        pid = backend.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_until_gone(backend)
        with pytest.raises(BackendError, match="is down; retrying in"):
            backend.predict(TEXTS[:1])
    finally:
        backend.close()


def test_close_ends_the_child(tiny_model_dir):
    backend = IsolatedBackend(tiny_model_dir, threads=1)
    pid = backend.pid
    assert pid is not None
    backend.close()
    assert backend.pid is None
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)


def _wait_until_gone(backend: IsolatedBackend) -> None:
    deadline = time.monotonic() + 10
    while backend.pid is not None and time.monotonic() < deadline:  # pid polls the child
        time.sleep(0.02)
    assert backend.pid is None


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="model directory not found"):
        IsolatedBackend(tmp_path / "missing", threads=1)


def test_bad_settings_are_refused_before_starting_anything(tiny_model_dir):
    with pytest.raises(BackendError, match="backend kind"):
        IsolatedBackend(tiny_model_dir, kind="tensorflow")
    with pytest.raises(BackendError, match="threads=0"):
        IsolatedBackend(tiny_model_dir, threads=0)


def test_messages_round_trip_and_bad_lengths_are_refused():
    buf = io.BytesIO()
    write_message(buf, {"texts": ["a", "é", "中"]})
    r, w = os.pipe()
    os.write(w, buf.getvalue())
    assert read_message(r) == {"texts": ["a", "é", "中"]}
    os.write(w, (isolated.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="over the"):
        read_message(r)
    os.write(w, (2).to_bytes(4, "big") + b"[]")
    with pytest.raises(ValueError, match="JSON object"):
        read_message(r)
    os.close(w)
    with pytest.raises(EOFError):
        read_message(r)
    os.close(r)


def test_read_gives_up_at_the_deadline():
    r, w = os.pipe()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            read_message(r, deadline=time.monotonic() + 0.2)
        assert time.monotonic() - started < 2.0
    finally:
        os.close(r)
        os.close(w)


def test_a_hung_child_fails_the_call_at_the_timeout_and_is_replaced(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(isolated, "RESTART_BACKOFF_S", 0.0)
    backend = IsolatedBackend(tiny_model_dir, threads=1, call_timeout_s=0.5)
    try:
        pid = backend.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
        started = time.monotonic()
        with pytest.raises(BackendError, match="failed: no answer"):
            backend.predict(TEXTS[:1])
        assert time.monotonic() - started < 5.0
        assert _is_zombie_or_gone(pid)
        assert len(backend.predict(TEXTS[:1])) == 1
        assert backend.pid not in (None, pid)
    finally:
        backend.close()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_the_child_can_be_pinned_to_cpus(tiny_model_dir):
    cpu = min(os.sched_getaffinity(0))
    backend = IsolatedBackend(tiny_model_dir, threads=1, cpus=[cpu])
    try:
        assert os.sched_getaffinity(backend.pid) == {cpu}
        assert len(backend.predict(TEXTS[:2])) == 2
    finally:
        backend.close()
    with pytest.raises(BackendError, match=r"cpus \[4096\] are not available"):
        IsolatedBackend(tiny_model_dir, threads=1, cpus=[4096])
