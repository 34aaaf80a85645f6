"""Shared setup for the serving benchmarks: request texts, a demo-shaped model, a serve config.

Every serving benchmark needs the same three things, built the same way so their numbers
compare:

- `request_texts`: what the requests carry. Real reviews (SST-2 dev + waimai_10k, English and
  Chinese interleaved) from the shared data folder when it is there, else an eval parquet
  given explicitly, else the built-in `default_texts()`.
- `build_demo_registry`: a registry holding a randomly initialised `EncoderClassifier` with
  the shape of `lmforge demo`'s model as model "demo" (alias production). Serving cost depends
  on the shape and the token counts, not on what was learned, so no training is needed.
- `write_serve_config`: a YAML run config whose `serve:` section turns the prediction cache
  off (each request must reach the model) and sets whatever the benchmark varies.

`bench_env(threads)` gives the environment variables that cap every thread pool a server
process may start, so arms given the same thread count really use the same parallelism.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import yaml

from lmforge.bench.loadgen import default_texts, load_eval_texts
from lmforge.errors import ConfigError

REAL_TEXTS_PER_SET = 1000
SHARED_DATA_ENV = "LMFORGE_SHARED_DATA"
SST2_FILE = Path("sst2") / "dev.tsv"
WAIMAI_FILE = Path("chinese") / "waimai_10k.csv"
DEMO_MODEL_NAME = "demo"
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


def shared_data_dir() -> Path | None:
    """The shared data folder (`../shared/data` next to the checkout), if there is one.

    $LMFORGE_SHARED_DATA wins; then the folder next to the current directory (benchmarks run
    from the repository root); then the one next to this source tree (an editable install).
    """
    env = os.environ.get(SHARED_DATA_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path.cwd().parent / "shared" / "data")
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def _read_column(path: Path, column: str, delimiter: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter=delimiter)
        texts = []
        for row in rows:
            text = row.get(column) or ""
            if text.strip():
                texts.append(text)
            if len(texts) >= REAL_TEXTS_PER_SET:  # bounded: the files hold thousands of rows
                break
    return texts


def request_texts(
    eval_path: Path | None = None, shared_dir: Path | None = None
) -> tuple[list[str], str]:
    """The texts requests carry, and where they came from.

    `eval_path` (a parquet with a `text` column) wins. Otherwise the first 1000 non-empty
    SST-2 dev sentences and waimai_10k reviews, interleaved (en, zh, en, ...), when both files
    are in `shared_dir` (default: `shared_data_dir()`); else the built-in texts.
    """
    if eval_path is not None:
        return load_eval_texts(eval_path), str(eval_path)
    folder = shared_dir if shared_dir is not None else shared_data_dir()
    if folder is not None and (folder / SST2_FILE).is_file() and (folder / WAIMAI_FILE).is_file():
        english = _read_column(folder / SST2_FILE, "content", "\t")
        chinese = _read_column(folder / WAIMAI_FILE, "review", ",")
        mixed = [t for pair in zip(english, chinese, strict=False) for t in pair]
        if mixed:
            return mixed, f"shared/data: {SST2_FILE.as_posix()} + {WAIMAI_FILE.as_posix()}"
    return default_texts(), "lmforge.bench.loadgen.default_texts()"


def build_demo_registry(root: Path, texts: list[str], preset: str = "tiny") -> dict[str, Any]:
    """Register a demo-shaped, randomly initialised classifier as `demo` (production).

    Writes the model folder to ROOT/model and the registry to ROOT/registry; returns what was
    built (shape, parameter count) for the benchmark's report. The tokenizer is trained on
    `texts`, so requests carrying them tokenise as a real deployment's would.
    """
    import torch

    from lmforge.demo.reviews import LABELS
    from lmforge.models.encoder import EncoderClassifier, encoder_config
    from lmforge.models.export import save_model_dir
    from lmforge.registry import ModelRegistry
    from lmforge.text.tokenizer import train_tokenizer

    root = Path(root)
    tokenizer = train_tokenizer(texts, vocab_size=8000, min_frequency=1)
    torch.manual_seed(0)  # the same weights every run, so predictions can be compared
    cfg = encoder_config(preset, tokenizer.get_vocab_size(), len(LABELS))
    model = EncoderClassifier(cfg).eval()
    model_dir = save_model_dir(root / "model", model, tokenizer, list(LABELS))
    ModelRegistry(root / "registry").register(
        DEMO_MODEL_NAME, model_dir, metrics={}, alias="production"
    )
    return {
        "kind": "built",
        "preset": preset,
        "weights": "random init (seed 0)",
        "vocab_size": tokenizer.get_vocab_size(),
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "d_ff": cfg.d_ff,
        "max_len": cfg.max_len,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def production_model_dir(registry_dir: Path, model: str | None = None) -> Path:
    """The folder of the model version a server on `registry_dir` serves by default."""
    from lmforge.registry import ModelRegistry

    return ModelRegistry(registry_dir, create=False).resolve(model, "production").path


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, section by section (a nested dict merges, anything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def serve_section(**serve_overrides: Any) -> dict[str, Any]:
    """The `serve:` mapping a benchmark writes: cache off, then `serve_overrides` merged in.

    Tracing, batching and the rest keep lmforge's defaults unless overridden, e.g.
    `serve_section(batching={"max_batch_size": 1}, backend={"threads": 1})`. Validated here,
    so a misspelt key fails before a server is started with it.
    """
    from pydantic import ValidationError

    from lmforge.config import ServeConfig

    section = _merge({"cache": {"kind": "none"}}, serve_overrides)
    try:
        ServeConfig.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"serve.{where}: {first['msg']} (in the benchmark's serve config)"
        ) from None
    return section


def write_serve_config(path: Path, **serve_overrides: Any) -> Path:
    """Write a run config holding only a `serve:` section (see `serve_section`); its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"serve": serve_section(**serve_overrides)}, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def bench_env(threads: int) -> dict[str, str]:
    """Environment variables capping OpenMP/MKL/BLAS and Rayon (the tokenizer) pools.

    Apply them before torch is imported (`os.environ.update(...)`, or a child's env): torch
    sizes some pools at import. `torch.set_num_threads` in the server still sets intra-op
    threads; these keep libraries below torch from starting a pool per core.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r}: use a positive whole number, e.g. 1")
    return {name: str(threads) for name in THREAD_ENV_VARS}
