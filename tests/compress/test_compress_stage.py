import pytest
from rich.console import Console

from lmforge.compress.stage import stage_inputs
from lmforge.config import RunConfig
from lmforge.errors import ConfigError, InputDataError, StageError
from lmforge.inference import TextClassifier
from lmforge.pipeline import run_stage, stage_spec
from lmforge.registry import ModelRegistry
from lmforge.report.contract import REPORT_CONTRACT
from lmforge.workspace import Workspace, read_json


def _cfg(ws, **compress):
    compress = {"latency_batch_sizes": [1, 4], "latency_repeats": 3, **compress}
    return RunConfig.model_validate(
        {"workdir": str(ws.root), "train": {"model_name": "tiny"}, "compress": compress}
    )


def test_compress_stage_registers_int8_and_reports_before_after(tiny_workspace):
    ws = tiny_workspace
    status, result = run_stage(stage_spec("compress"), _cfg(ws), ws, Console(quiet=True))
    assert status == "ran"
    s = result.summary
    for key in REPORT_CONTRACT["compress"]:
        assert isinstance(s[key], float), key
    assert s["size_mb_after"] < s["size_mb_before"]
    assert s["latency_ms_before"] > 0 and s["latency_ms_after"] > 0
    assert 0.0 <= s["accuracy_after"] <= 1.0 and s["eval_docs"] == 15
    assert {(r["variant"], r["batch_size"]) for r in s["table"]} == {
        ("fp32", 1), ("fp32", 4), ("int8", 1), ("int8", 4)
    }  # fmt: skip
    assert read_json(ws.root / "compress" / "summary.json") == s
    # Production did not move, so nothing the stage reads changed: a rerun is skipped.
    status, _ = run_stage(stage_spec("compress"), _cfg(ws), ws, Console(quiet=True))
    assert status == "skipped"

    registry = ModelRegistry(ws.registry_dir)
    assert registry.resolve("tiny", "production").version == 1  # production untouched
    int8 = registry.resolve("tiny", "int8")
    assert int8.version == 2 == s["compressed_version"]
    assert read_json(int8.path / "config.json")["quantization"] == "int8_dynamic"
    assert int8.metrics["accuracy"] == s["accuracy_after"]
    assert int8.tags == {"quantization": "int8_dynamic", "source_version": 1}
    assert sorted(p.name for p in int8.path.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json"
    ]  # fmt: skip
    # The registered folder loads as an int8 model that the server can run.
    clf = TextClassifier.load(int8.path)
    assert clf.quantization == "int8_dynamic"
    assert (int8.path / "model.safetensors").stat().st_size / 1e6 == pytest.approx(
        s["size_mb_after"], abs=1e-4
    )


def test_inputs_are_production_files_and_eval_split(tiny_workspace):
    files = stage_inputs(_cfg(tiny_workspace), tiny_workspace)
    names = sorted(f.name for f in files)
    assert names == ["config.json", "eval.parquet", "model.safetensors", "tokenizer.json"]


def test_eval_limit_caps_the_measured_documents(tiny_workspace):
    cfg = _cfg(tiny_workspace, eval_limit=4, latency_batch_sizes=[2], latency_repeats=1)
    _, result = run_stage(stage_spec("compress"), cfg, tiny_workspace, Console(quiet=True))
    assert result.summary["eval_docs"] == 4
    assert {r["batch_size"] for r in result.summary["table"]} == {1, 2}  # batch 1 always


def test_missing_inputs_say_which_stage_to_run(tmp_path, tiny_workspace):
    ws = Workspace(tmp_path / "empty")
    with pytest.raises(StageError, match="run the train stage first"):
        run_stage(stage_spec("compress"), _cfg(ws), ws, Console(quiet=True))
    (tiny_workspace.root / "train" / "eval.parquet").unlink()
    with pytest.raises(InputDataError, match="eval split not found"):
        run_stage(stage_spec("compress"), _cfg(tiny_workspace), tiny_workspace, Console(quiet=True))


def test_an_already_quantised_production_is_refused(tiny_workspace):
    ws = tiny_workspace
    run_stage(stage_spec("compress"), _cfg(ws), ws, Console(quiet=True))
    ModelRegistry(ws.registry_dir).set_alias("tiny", "production", 2)
    with pytest.raises(StageError, match="already quantised"):
        run_stage(stage_spec("compress"), _cfg(ws), ws, Console(quiet=True))


def test_nonpositive_batch_sizes_are_refused(tiny_workspace):
    cfg = _cfg(tiny_workspace, latency_batch_sizes=[1, 0])
    with pytest.raises(ConfigError, match=r"latency_batch_sizes holds \[0\]"):
        run_stage(stage_spec("compress"), cfg, tiny_workspace, Console(quiet=True))


def test_onnx_variants_are_exported_measured_and_registered(tiny_workspace):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="ONNX is not installed: pip install 'lmforge[onnx]'")
    from lmforge.serve.backends import load_backend

    ws = tiny_workspace
    cfg = _cfg(ws, onnx=True, latency_batch_sizes=[2], latency_repeats=1, eval_limit=6)
    status, result = run_stage(stage_spec("compress"), cfg, ws, Console(quiet=True))
    assert status == "ran"
    s = result.summary
    variants = ("fp32", "int8", "onnx-fp32", "onnx-int8")
    assert {(r["variant"], r["batch_size"]) for r in s["table"]} == {
        (v, bs) for v in variants for bs in (1, 2)
    }
    assert all(r["latency_ms"] > 0 for r in s["table"])
    # The torch int8 variant is unchanged: version 2, same tags, same summary keys.
    registry = ModelRegistry(ws.registry_dir)
    assert registry.resolve("tiny", "int8").version == 2 == s["compressed_version"]
    assert registry.resolve("tiny", "production").version == 1

    fp32 = registry.resolve("tiny", "onnx-fp32")
    int8 = registry.resolve("tiny", "onnx-int8")
    assert (fp32.version, int8.version) == (3, 4)
    assert (s["onnx_fp32_version"], s["onnx_int8_version"]) == (3, 4)
    assert fp32.tags == {"format": "onnx", "quantization": None, "source_version": 1}
    assert int8.tags == {"format": "onnx", "quantization": "int8-onnx", "source_version": 1}
    for version, key in ((fp32, "onnx_fp32"), (int8, "onnx_int8")):
        assert sorted(p.name for p in version.path.iterdir()) == [
            "config.json", "model.onnx", "tokenizer.json"
        ]  # fmt: skip
        assert version.metrics["accuracy"] == s[f"accuracy_{key}"]
        assert version.metrics["size_mb"] == s[f"size_mb_{key}"]
        assert version.metrics["latency_ms_b1"] == s[f"latency_ms_{key}"] > 0
        assert set(version.metrics) == {
            "accuracy", "size_mb", "latency_ms_b1", "latency_ms_b2", "agreement_with_source"
        }  # fmt: skip
        assert (version.path / "model.onnx").stat().st_size / 1e6 == pytest.approx(
            s[f"size_mb_{key}"], abs=1e-4
        )
        assert load_backend(version.path).kind == "onnx"
    # fp32 ONNX is the same model as fp32 torch; int8 ONNX is smaller.
    assert s["accuracy_onnx_fp32"] == s["accuracy_before"]
    assert s["prediction_agreement_onnx_fp32"] == 1.0
    assert s["size_mb_onnx_int8"] < 0.8 * s["size_mb_onnx_fp32"]
    assert read_json(ws.root / "compress" / "summary.json") == s

    # An ONNX export promoted to production cannot be compressed again.
    registry.set_alias("tiny", "production", fp32.version)
    with pytest.raises(StageError, match="is an ONNX export; promote the float PyTorch"):
        run_stage(stage_spec("compress"), cfg, ws, Console(quiet=True))


def test_onnx_off_leaves_no_onnx_variant(tiny_workspace):
    ws = tiny_workspace
    cfg = _cfg(ws, latency_batch_sizes=[1], latency_repeats=1, eval_limit=3)
    _, result = run_stage(stage_spec("compress"), cfg, ws, Console(quiet=True))
    assert not any("onnx" in key for key in result.summary)
    assert [v.version for v in ModelRegistry(ws.registry_dir).versions("tiny")] == [1, 2]
    assert not any("onnx" in p.name for p in (ws.root / "compress").iterdir())
