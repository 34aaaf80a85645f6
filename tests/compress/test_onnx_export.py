import sys

import numpy as np
import pytest
import torch

from lmforge.compress.measure import file_size_mb
from lmforge.compress.onnx_export import (
    INT8_ONNX,
    OnnxExportError,
    _check_size,
    export_onnx,
    quantize_onnx,
    require_onnx,
)
from lmforge.inference import TextClassifier
from lmforge.models.export import ModelFormatError, save_model_dir
from lmforge.serve.backends import load_backend
from lmforge.workspace import read_json

_HINT = "ONNX is not installed: pip install 'lmforge[onnx]'"
onnx = pytest.importorskip("onnx", reason=_HINT)
ort = pytest.importorskip("onnxruntime", reason=_HINT)
pytest.importorskip("onnxscript", reason=_HINT)

# English and Chinese, very different lengths, so every batch of several pads some rows.
TEXTS = [
    "The delivery was late and the box was damaged.",
    "物流太慢了，包装也破了。",
    "Love it!",
    "请问可以开发票吗？",
    "Does this model support wireless charging, and how long is the warranty for it?",
    "ok",
    "音质很好，佩戴舒服，非常满意。客服态度也不错，物流很快，包装完好，值得推荐给朋友。",
    "Customer service never answered my emails about the cracked screen.",
    "这个套餐每个月多少钱？",
    "Fast shipping.",
    "",
]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """(fp32 folder, int8 folder), both straight from the PyTorch folder."""
    root = tmp_path_factory.mktemp("onnx-export")
    fp32 = export_onnx(tiny_model_dir, root / "fp32")
    int8 = export_onnx(tiny_model_dir, root / "int8", int8=True)
    return fp32, int8


@pytest.fixture(scope="module")
def torch_clf(tiny_model_dir):
    return TextClassifier.load(tiny_model_dir)


def test_folder_holds_graph_config_and_the_same_tokenizer(exported, tiny_model_dir):
    fp32, int8 = exported
    source = read_json(tiny_model_dir / "config.json")
    for folder, quantization in ((fp32, None), (int8, INT8_ONNX)):
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.json", "model.onnx", "tokenizer.json"
        ]  # fmt: skip
        assert read_json(folder / "config.json") == {
            **source,
            "format": "onnx",
            "quantization": quantization,
        }
        assert file_size_mb(folder) == (folder / "model.onnx").stat().st_size / 1e6
        assert (folder / "tokenizer.json").read_bytes() == (
            tiny_model_dir / "tokenizer.json"
        ).read_bytes()
    # No staging or old folders left beside the result.
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["fp32", "int8"]


def test_graph_has_int64_inputs_with_symbolic_batch_and_sequence_axes(exported):
    model = onnx.load(str(exported[0] / "model.onnx"))
    onnx.checker.check_model(model)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    for tensor in inputs.values():
        assert tensor.elem_type == onnx.TensorProto.INT64
        dims = tensor.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims)
    (output,) = model.graph.output
    assert output.name == "logits"
    dims = output.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 3
    # The exporter's per-node stack traces (local paths) are not shipped.
    assert not any(node.metadata_props for node in model.graph.node)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_fp32_probabilities_match_torch(exported, torch_clf, batch_size):
    backend = load_backend(exported[0], kind="onnx", threads=1)
    want = torch_clf.predict_proba(TEXTS, batch_size=batch_size)
    got = backend.predict_proba(TEXTS, batch_size=batch_size)
    assert got.shape == want.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_raw_graph_matches_torch_logits_on_a_padded_batch(exported, torch_clf):
    # Straight into the session, bypassing the backend: the graph itself handles padding.
    session = ort.InferenceSession(
        str(exported[0] / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    ids, mask = torch_clf.encode(TEXTS[:7])
    assert (mask == 0).any()  # the batch really is padded
    (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.inference_mode():
        want = torch_clf.model(ids, mask).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_int8_is_smaller_quantises_every_linear_and_keeps_predictions(exported):
    fp32_dir, int8_dir = exported
    assert (int8_dir / "model.onnx").stat().st_size < 0.8 * (fp32_dir / "model.onnx").stat().st_size
    graph = onnx.load(str(int8_dir / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # 4 attention projections + 2 MLP layers + the head: 7 nn.Linear in the 1-block model.
    assert ops.count("MatMulInteger") == 7
    assert "Gemm" not in ops
    fp32 = load_backend(fp32_dir, threads=1)
    int8 = load_backend(int8_dir, threads=1)
    assert int8.quantization == INT8_ONNX and fp32.quantization is None
    texts = TEXTS * 3 + [t.upper() + " again" for t in TEXTS]
    p32, p8 = fp32.predict_proba(texts), int8.predict_proba(texts)
    # A random-init model gives near-uniform probabilities, so an argmax can flip on a
    # near-tie; the robust checks are the size of the error and agreement where the fp32
    # prediction has a clear margin.
    assert np.abs(p32 - p8).max() < 0.01
    top2 = np.sort(p32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * np.abs(p32 - p8).max()
    agree = p32.argmax(1) == p8.argmax(1)
    assert agree[clear].all()
    assert agree.mean() >= 0.9


def test_quantize_onnx_gives_the_int8_folder_without_a_new_export(exported, tmp_path):
    fp32_dir, int8_dir = exported
    out = quantize_onnx(fp32_dir, tmp_path / "q")
    assert read_json(out / "config.json") == read_json(int8_dir / "config.json")
    a = load_backend(out, threads=1).predict_proba(TEXTS)
    b = load_backend(int8_dir, threads=1).predict_proba(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(OnnxExportError, match="already quantised"):
        quantize_onnx(out, tmp_path / "qq")
    with pytest.raises(OnnxExportError, match=r"holds no model\.onnx"):
        quantize_onnx(tmp_path / "nothing", tmp_path / "qqq")


def test_export_replaces_an_existing_folder(exported, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    quantize_onnx(exported[0], out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_refuses_missing_and_onnx_folders(exported, tmp_path):
    with pytest.raises(ModelFormatError, match="model directory not found"):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(OnnxExportError, match="already an ONNX export"):
        export_onnx(exported[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_int8_torch_folder_exports_its_dequantised_weights(tiny_model_dir, tmp_path):
    clf = TextClassifier.load(tiny_model_dir)
    int8_torch = save_model_dir(
        tmp_path / "int8-torch", clf.model, clf.tokenizer, clf.labels, "int8_dynamic"
    )
    out = export_onnx(int8_torch, tmp_path / "onnx")
    assert read_json(out / "config.json")["quantization"] is None
    want = TextClassifier.load(int8_torch, quantization=None).predict_proba(TEXTS)
    got = load_backend(out, threads=1).predict_proba(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_models_over_the_protobuf_limit_are_refused():
    big = torch.nn.Linear(2**15, 2**15, device="meta")  # 1.07e9 float32 weights: 4.3 GB
    with pytest.raises(OnnxExportError, match="over the 2 GB"):
        _check_size(big)


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import now raises ImportError
    with pytest.raises(OnnxExportError, match=r"\['onnxscript'\].*pip install 'lmforge\[onnx\]'"):
        require_onnx()
