import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from lmforge.compress.onnx_export import export_onnx, quantize_onnx
from lmforge.errors import LmforgeError
from lmforge.inference import TextClassifier
from lmforge.models.export import save_model_dir
from lmforge.registry import ModelRegistry
from lmforge.serve.backends import (
    BackendError,
    OnnxBackend,
    TorchBackend,
    default_threads,
    load_backend,
)

TEXTS = [
    "The delivery was late and the box was damaged.",
    "物流太慢了，包装也破了。",
    "Love it!",
    "请问可以开发票吗？",
    "Does this model support wireless charging, and how long is the warranty for it?",
    "音质很好，佩戴舒服，非常满意。",
    "Fast shipping.",
]


@pytest.fixture(scope="module")
def onnx_dirs(tiny_model_dir, tmp_path_factory):
    """(fp32, int8) ONNX folders of the tiny model: one export, then quantise that graph."""
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="ONNX is not installed: pip install 'lmforge[onnx]'")
    root = tmp_path_factory.mktemp("backends")
    fp32 = export_onnx(tiny_model_dir, root / "onnx-fp32")
    return fp32, quantize_onnx(fp32, root / "onnx-int8")


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_torch_backend_predicts_exactly_what_text_classifier_does(tiny_model_dir):
    backend = load_backend(tiny_model_dir, kind="torch")
    clf = TextClassifier.load(tiny_model_dir)
    assert isinstance(backend, TorchBackend)
    assert (backend.kind, backend.labels, backend.quantization) == ("torch", clf.labels, None)
    assert backend.predict(TEXTS) == clf.predict(TEXTS)
    np.testing.assert_array_equal(backend.predict_proba(TEXTS), clf.predict_proba(TEXTS))


def test_auto_picks_onnx_runtime_only_for_a_folder_with_model_onnx(tiny_model_dir, onnx_dirs):
    assert load_backend(tiny_model_dir).kind == "torch"
    fp32 = load_backend(onnx_dirs[0])
    int8 = load_backend(onnx_dirs[1])
    assert isinstance(fp32, OnnxBackend) and isinstance(int8, OnnxBackend)
    assert (fp32.kind, fp32.quantization) == ("onnx", None)
    assert (int8.kind, int8.quantization) == ("onnx", "int8-onnx")
    assert fp32.labels == int8.labels == ["complaint", "praise", "question"]


def test_quantization_of_an_int8_torch_folder_is_reported(tiny_model_dir, tmp_path):
    clf = TextClassifier.load(tiny_model_dir)
    folder = save_model_dir(tmp_path / "q", clf.model, clf.tokenizer, clf.labels, "int8_dynamic")
    backend = load_backend(folder)
    assert (backend.kind, backend.quantization) == ("torch", "int8_dynamic")


def test_onnx_predictions_are_json_ready_in_input_order_and_match_torch(tiny_model_dir, onnx_dirs):
    backend = load_backend(onnx_dirs[0], threads=1)
    got = backend.predict(TEXTS)
    assert json.loads(json.dumps(got)) == got  # plain str / float, nothing numpy
    assert all(type(p) is float for row in got for p in row["probs"].values())
    want = TextClassifier.load(tiny_model_dir).predict(TEXTS)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-4)
    # Rows follow the input order, whatever length-sorting happens inside.
    backwards = backend.predict(TEXTS[::-1])
    assert [r["label"] for r in backwards] == [r["label"] for r in got[::-1]]
    for b, g in zip(backwards, got[::-1], strict=True):
        assert b["probs"] == pytest.approx(g["probs"], abs=1e-6)
    assert backend.predict([]) == []
    with pytest.raises(BackendError, match="not one string"):
        backend.predict("one text")  # type: ignore[arg-type]


def test_onnx_backend_is_safe_to_call_from_several_threads(onnx_dirs):
    backend = load_backend(onnx_dirs[1], threads=1)
    serial = backend.predict_proba(TEXTS)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: backend.predict_proba(TEXTS), range(8)))
    for r in results:
        np.testing.assert_array_equal(r, serial)


def test_threads_are_set_on_the_session_and_on_torch(tiny_model_dir, onnx_dirs, keep_torch_threads):
    import onnxruntime as ort

    backend = load_backend(onnx_dirs[0], threads=3)
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 3 == backend.threads
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    torch.set_num_threads(2)
    assert load_backend(onnx_dirs[0]).threads == 2  # None: the process's torch count
    backend = load_backend(tiny_model_dir, threads=1)
    assert torch.get_num_threads() == 1 == backend.threads


def test_default_threads_split_the_cores_between_workers():
    cores = os.cpu_count() or 1
    assert default_threads() == cores
    assert default_threads(2) == max(1, cores // 2)
    assert default_threads(cores * 4) == 1  # never zero
    with pytest.raises(BackendError, match="workers=0"):
        default_threads(0)


def test_exported_folder_registers_and_loads_back_from_the_registry(tmp_path, onnx_dirs):
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register("tiny", onnx_dirs[1], tags={"format": "onnx"}, alias="onnx-int8")
    resolved = registry.resolve("tiny", "onnx-int8")
    assert resolved.path == version.path and resolved.path != onnx_dirs[1]
    backend = load_backend(resolved.path)
    assert (backend.kind, backend.quantization) == ("onnx", "int8-onnx")
    np.testing.assert_array_equal(
        backend.predict_proba(TEXTS), load_backend(onnx_dirs[1]).predict_proba(TEXTS)
    )


def test_clear_errors_for_bad_folders_kinds_and_threads(tmp_path, tiny_model_dir, onnx_dirs):
    with pytest.raises(BackendError, match=r"model directory not found: .*missing"):
        load_backend(tmp_path / "missing")
    with pytest.raises(BackendError, match=r"holds no model\.onnx.*export_onnx.*compress"):
        load_backend(tiny_model_dir, kind="onnx")
    with pytest.raises(BackendError, match=r"is an ONNX export.*kind onnx or auto"):
        load_backend(onnx_dirs[0], kind="torch")
    with pytest.raises(BackendError, match="backend kind 'tensorrt'"):
        load_backend(tiny_model_dir, kind="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="threads=0"):
        load_backend(tiny_model_dir, threads=0)
    assert issubclass(BackendError, LmforgeError)


def test_a_damaged_onnx_folder_names_the_problem(tmp_path, onnx_dirs):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not a graph")
    (broken / "config.json").write_text((onnx_dirs[0] / "config.json").read_text())
    with pytest.raises(BackendError, match="ONNX Runtime cannot load"):
        load_backend(broken)
    (broken / "config.json").write_text('{"labels": ["a", "b"]}')
    with pytest.raises(BackendError, match=r"lacks the keys \['pad_id', 'model'\]"):
        load_backend(broken)


def test_missing_onnxruntime_names_the_install_command(onnx_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'lmforge\[onnx\]'"):
        load_backend(onnx_dirs[0])
