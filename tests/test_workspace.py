import json
import os

import pytest

from lmforge.errors import LmforgeError
from lmforge.workspace import (
    SUCCESS_MARKER,
    Workspace,
    atomic_path,
    atomic_write_json,
    hash_inputs,
)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"k": 1})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": 1}
    assert os.listdir(tmp_path / "a") == ["x.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_stage_lifecycle_and_up_to_date_check(tmp_path):
    ws = Workspace(tmp_path / "run")
    out = ws.stage_dir("data") / "part.txt"
    out.write_text("x")
    inputs = hash_inputs([out])
    started = ws.mark_started("data", inputs, "cfg1")
    assert not ws.is_complete("data")
    ws.mark_complete("data", [out], started, {"docs_out": 3})
    assert (ws.stage_dir("data") / SUCCESS_MARKER).exists()
    assert ws.summary("data") == {"docs_out": 3}
    entry = ws.manifest()["stages"]["data"]
    assert entry["status"] == "complete" and entry["outputs"] == ["data/part.txt"]
    assert entry["seconds"] >= 0
    assert ws.is_up_to_date("data", inputs, "cfg1")
    assert not ws.is_up_to_date("data", inputs, "cfg2")
    out.write_text("changed")
    assert not ws.is_up_to_date("data", hash_inputs([out]), "cfg1")


def test_failed_stage_is_not_up_to_date(tmp_path):
    ws = Workspace(tmp_path)
    ws.mark_started("train", {}, "c")
    ws.mark_failed("train", "boom")
    assert ws.manifest()["stages"]["train"]["status"] == "failed"
    assert not ws.is_up_to_date("train", {}, "c")


def test_hash_inputs_expands_folders_and_skips_hidden_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / ".tmp").write_text("partial")
    hashes = hash_inputs([tmp_path / "d"])
    assert list(hashes) == [str(tmp_path / "d" / "a.txt")]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    atomic_write_json(tmp_path / "x.json", {})
    with atomic_path(tmp_path / "y.bin") as tmp:
        tmp.write_bytes(b"1")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("x.json", "y.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_stage_whose_outputs_were_deleted_is_not_up_to_date(tmp_path):
    ws = Workspace(tmp_path)
    out = ws.stage_dir("train") / "model.safetensors"
    out.write_bytes(b"w")
    ws.mark_complete("train", [out], ws.mark_started("train", {}, "c"), {})
    assert ws.is_up_to_date("train", {}, "c")
    out.unlink()
    assert not ws.is_up_to_date("train", {}, "c")


def test_restarting_a_stage_drops_its_old_summary(tmp_path):
    ws = Workspace(tmp_path)
    ws.mark_complete("data", [], ws.mark_started("data", {}, "c"), {"docs_out": 1})
    ws.mark_started("data", {}, "c")
    assert ws.summary("data") is None


def test_non_finite_numbers_are_written_as_null(tmp_path):
    atomic_write_json(tmp_path / "s.json", {"p50": float("nan"), "xs": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"p50": None, "xs": [None, 1.0]}


def test_a_damaged_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="delete it"):
        Workspace(tmp_path).manifest()


def test_inputs_inside_the_run_are_keyed_relative_to_it(tmp_path):
    ws = Workspace(tmp_path / "run")
    inside = str(ws.root / "data" / "x.parquet")
    outside = str(tmp_path / "in.jsonl")
    assert ws.relative_inputs({inside: "a", outside: "b"}) == {"data/x.parquet": "a", outside: "b"}
