"""The compress stage: int8-quantise the production model, measure before/after, register it.

The quantised model becomes a new version of the same registry model with alias "int8";
"production" stays on the float version, so promoting int8 is a separate, deliberate step
(`lmforge registry promote NAME VERSION --alias production`) taken after reading the numbers.

With `compress.onnx: true` the float model is also exported to ONNX (fp32, and ONNX Runtime's
dynamic int8 of that graph), measured alongside the PyTorch variants (same texts, batches and
thread count) and registered as further versions with aliases "onnx-fp32" and "onnx-int8".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.compress.measure import (
    file_size_mb,
    load_eval_split,
    measure_accuracy,
    measure_latency_ms,
    state_dict_bytes,
)
from lmforge.compress.quantize import compress_model
from lmforge.config import RunConfig
from lmforge.errors import ConfigError, StageError
from lmforge.pipeline import StageResult
from lmforge.registry import ModelRegistry, ModelVersion
from lmforge.workspace import Workspace, list_files

COMPRESSED_ALIAS = "int8"
BEFORE, AFTER = "fp32", "int8"
# ONNX variant names: table rows, registry aliases, and (with "_") summary key suffixes.
ONNX_FP32, ONNX_INT8 = "onnx-fp32", "onnx-int8"


def production_version(cfg: RunConfig, ws: Workspace) -> ModelVersion:
    """The version to compress: the trained model's production alias (or the only model's)."""
    if not (ws.registry_dir / "registry.sqlite").is_file():
        raise StageError(
            f"no model registry at {ws.registry_dir}; run the train stage first (`lmforge train`)"
        )
    registry = ModelRegistry(ws.registry_dir, create=False)
    name = cfg.train.model_name if cfg.train.model_name in registry.names() else cfg.serve.model
    return registry.resolve(name, "production")


def eval_split_path(ws: Workspace) -> Path:
    return ws.root / "train" / "eval.parquet"


def stage_inputs(cfg: RunConfig, ws: Workspace) -> list[Path]:
    files = [eval_split_path(ws)]
    if (ws.registry_dir / "registry.sqlite").is_file():
        files += list_files([production_version(cfg, ws).path])
    return [f for f in files if f.is_file()]


def run(cfg: RunConfig, ws: Workspace, console: Console) -> StageResult:
    from lmforge.inference import TextClassifier
    from lmforge.models.export import save_model_dir

    ccfg = cfg.compress
    bad = [b for b in ccfg.latency_batch_sizes if b < 1]
    if bad:
        raise ConfigError(
            f"compress.latency_batch_sizes holds {bad}; batch sizes must be 1 or more"
        )
    if ccfg.onnx:
        from lmforge.compress.onnx_export import require_onnx

        require_onnx()  # before minutes of work, not after
    version = production_version(cfg, ws)
    if version.tags.get("format") == "onnx" or (version.path / "model.onnx").is_file():
        raise StageError(
            f"production version {version.name} v{version.version} is an ONNX export; "
            "promote the float PyTorch version to production before compressing"
        )
    if version.tags.get("quantization") or _folder_quantization(version) is not None:
        raise StageError(
            f"production version {version.name} v{version.version} is already quantised; "
            "promote the float version to production before compressing"
        )
    texts, labels = load_eval_split(eval_split_path(ws), ccfg.eval_limit)
    float_clf = TextClassifier.load(version.path, quantization=None)

    out_dir = ws.stage_dir("compress") / f"model-{COMPRESSED_ALIAS}"
    compressed = compress_model(float_clf.model, ccfg.method)
    save_model_dir(out_dir, compressed, float_clf.tokenizer, float_clf.labels, ccfg.method)
    # Measure the folder as it loads back: that is exactly what the server will run.
    int8_clf = TextClassifier.load(out_dir)
    console.print(
        f"{version.name} v{version.version}: {ccfg.method}, measuring on {len(texts)} eval "
        f"texts with {ccfg.threads} thread(s)"
    )

    variants: dict[str, Any] = {BEFORE: float_clf, AFTER: int8_clf}
    folders = {BEFORE: version.path, AFTER: out_dir}
    if ccfg.onnx:
        folders.update(_export_onnx_variants(version.path, ws.stage_dir("compress")))
        variants.update(_load_onnx_variants(folders, ccfg.threads))
    batch_sizes = sorted({1, *ccfg.latency_batch_sizes})  # batch 1 is the summary's latency
    latency = measure_latency_ms(variants, texts, batch_sizes, ccfg.latency_repeats, ccfg.threads)
    size = {name: file_size_mb(folder) for name, folder in folders.items()}
    in_memory = {name: state_dict_bytes(variants[name].model) / 1e6 for name in (BEFORE, AFTER)}
    accuracy = {name: measure_accuracy(clf, texts, labels) for name, clf in variants.items()}
    agreement = _agreement(float_clf, int8_clf, texts)

    metrics = {
        "accuracy": round(accuracy[AFTER], 4),
        "size_mb": round(size[AFTER], 4),
        "latency_ms_b1": round(latency[AFTER][1], 3),
        "agreement_with_source": round(agreement, 4),
    }
    registered = ModelRegistry(ws.registry_dir).register(
        version.name,
        out_dir,
        metrics=metrics,
        tags={"quantization": ccfg.method, "source_version": version.version},
        alias=COMPRESSED_ALIAS,
    )
    console.print(
        f"registered {registered.name} v{registered.version} (alias {COMPRESSED_ALIAS}); "
        f"production stays on v{version.version}"
    )
    onnx_registered: dict[str, ModelVersion] = {}
    for name in (ONNX_FP32, ONNX_INT8):
        if name not in variants:
            continue
        onnx_metrics = {
            "accuracy": round(accuracy[name], 4),
            "size_mb": round(size[name], 4),
            **{f"latency_ms_b{bs}": round(latency[name][bs], 3) for bs in batch_sizes},
            "agreement_with_source": round(_agreement(float_clf, variants[name], texts), 4),
        }
        onnx_registered[name] = ModelRegistry(ws.registry_dir).register(
            version.name,
            folders[name],
            metrics=onnx_metrics,
            tags={
                "format": "onnx",
                "quantization": variants[name].quantization,
                "source_version": version.version,
            },
            alias=name,
        )
        console.print(
            f"registered {version.name} v{onnx_registered[name].version} (alias {name}, "
            f"ONNX Runtime)"
        )

    table = [
        {
            "variant": name,
            "batch_size": bs,
            "latency_ms": round(latency[name][bs], 3),
            "size_mb": round(size[name], 4),
            "accuracy": round(accuracy[name], 4),
        }
        for name in variants
        for bs in batch_sizes
    ]
    summary: dict[str, Any] = {
        "size_mb_before": round(size[BEFORE], 4),
        "size_mb_after": round(size[AFTER], 4),
        "latency_ms_before": round(latency[BEFORE][1], 3),
        "latency_ms_after": round(latency[AFTER][1], 3),
        "accuracy_before": round(accuracy[BEFORE], 4),
        "accuracy_after": round(accuracy[AFTER], 4),
        "method": ccfg.method,
        "model": version.name,
        "source_version": version.version,
        "compressed_version": registered.version,
        "size_ratio": round(size[AFTER] / size[BEFORE], 4),
        "state_dict_mb_before": round(in_memory[BEFORE], 4),
        "state_dict_mb_after": round(in_memory[AFTER], 4),
        "prediction_agreement": round(agreement, 4),
        "eval_docs": len(texts),
        "threads": ccfg.threads,
        "latency_repeats": ccfg.latency_repeats,
        "table": table,
    }
    for name, registered_onnx in onnx_registered.items():
        key = name.replace("-", "_")
        summary[f"size_mb_{key}"] = round(size[name], 4)
        summary[f"latency_ms_{key}"] = round(latency[name][1], 3)
        summary[f"accuracy_{key}"] = round(accuracy[name], 4)
        summary[f"prediction_agreement_{key}"] = registered_onnx.metrics["agreement_with_source"]
        summary[f"{key}_version"] = registered_onnx.version
    # The registered variants are outputs too: deleting one from the registry reruns the stage.
    outputs = [out_dir, registered.path]
    outputs += [folders[n] for n in onnx_registered] + [v.path for v in onnx_registered.values()]
    return StageResult(summary=summary, outputs=list_files(outputs))


def _export_onnx_variants(source: Path, stage_dir: Path) -> dict[str, Path]:
    """Export the float model once to ONNX fp32, then quantise that graph to ONNX int8."""
    from lmforge.compress.onnx_export import export_onnx, quantize_onnx

    fp32 = export_onnx(source, stage_dir / f"model-{ONNX_FP32}")
    return {ONNX_FP32: fp32, ONNX_INT8: quantize_onnx(fp32, stage_dir / f"model-{ONNX_INT8}")}


def _load_onnx_variants(folders: dict[str, Path], threads: int) -> dict[str, Any]:
    """ONNX Runtime sessions of the exported folders, as the server would load them."""
    from lmforge.serve.backends import load_backend

    return {
        name: load_backend(folders[name], kind="onnx", threads=threads)
        for name in (ONNX_FP32, ONNX_INT8)
    }


def _folder_quantization(version: ModelVersion) -> str | None:
    from lmforge.models.export import read_model_config

    return read_model_config(version.path).get("quantization")


def _agreement(a: Any, b: Any, texts: list[str]) -> float:
    """Share of texts on which two classifiers predict the same label."""
    pa, pb = a.predict_proba(texts).argmax(axis=1), b.predict_proba(texts).argmax(axis=1)
    return float((pa == pb).mean())
