import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.bench.loadgen import default_texts
from lmforge.bench.serving_setup import (
    THREAD_ENV_VARS,
    bench_env,
    build_demo_registry,
    production_model_dir,
    request_texts,
    serve_section,
    write_serve_config,
)
from lmforge.config import ServeConfig, load_config
from lmforge.errors import ConfigError


def _write_shared(folder, english, chinese):
    (folder / "sst2").mkdir(parents=True)
    (folder / "chinese").mkdir(parents=True)
    lines = ["label\tcontent"] + [f"1\t{t}" for t in english]
    (folder / "sst2" / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["label,review"] + [f"1,{t}" for t in chinese]
    (folder / "chinese" / "waimai_10k.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_request_texts_interleaves_real_english_and_chinese(tmp_path):
    _write_shared(tmp_path, ["good film", "  ", "bad film"], ["好吃", "太慢了", "一般"])
    texts, source = request_texts(shared_dir=tmp_path)
    # Blank rows are skipped; pairs stop at the shorter list.
    assert texts == ["good film", "好吃", "bad film", "太慢了"]
    assert "sst2/dev.tsv" in source and "waimai_10k.csv" in source


def test_request_texts_falls_back_to_builtins_without_shared_data(tmp_path):
    texts, source = request_texts(shared_dir=tmp_path / "missing")
    assert texts == default_texts()
    assert "default_texts" in source


def test_request_texts_prefers_an_eval_parquet(tmp_path):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"text": ["one review", "", "another"]}), path)
    _write_shared(tmp_path / "shared", ["good"], ["好"])
    texts, source = request_texts(path, shared_dir=tmp_path / "shared")
    assert texts == ["one review", "another"]
    assert source == str(path)


def test_build_demo_registry_serves_a_demo_shaped_model(tmp_path):
    from lmforge.serve.backends import load_backend

    texts = default_texts()
    info = build_demo_registry(tmp_path, texts, "tiny")
    assert info["d_model"] == 128 and info["n_layers"] == 2 and info["max_len"] == 128
    assert info["parameters"] > 0
    model_dir = production_model_dir(tmp_path / "registry")
    assert model_dir.is_dir() and (model_dir / "model.safetensors").is_file()
    backend = load_backend(model_dir, "torch", threads=1)
    out = backend.predict(texts[:3])
    assert len(out) == 3
    assert {row["label"] for row in out} <= {"negative", "neutral", "positive"}
    # Seeded: a second build gives the same weights, so runs compare prediction for prediction.
    build_demo_registry(tmp_path / "again", texts, "tiny")
    again = load_backend(production_model_dir(tmp_path / "again" / "registry"), "torch", 1)
    assert again.predict(texts[:3]) == out


def test_serve_config_round_trips_through_the_config_loader(tmp_path):
    path = write_serve_config(
        tmp_path / "cfg" / "serve.yaml",
        batching={"max_batch_size": 8, "max_queue_delay_ms": 0.5},
        backend={"threads": 1},
    )
    serve = load_config(path).serve
    assert serve.cache.kind == "none"  # every request reaches the model
    assert serve.batching.max_batch_size == 8
    assert serve.batching.max_queue_delay_ms == 0.5
    assert serve.batching.max_queue_texts == ServeConfig().batching.max_queue_texts
    assert serve.backend.threads == 1
    assert serve.tracing == ServeConfig().tracing  # tracing keeps lmforge's defaults


def test_serve_config_defaults_and_overriding_the_cache(tmp_path):
    assert load_config(write_serve_config(tmp_path / "a.yaml")).serve.cache.kind == "none"
    section = serve_section(cache={"kind": "lru", "max_entries": 10})
    assert section["cache"] == {"kind": "lru", "max_entries": 10}


def test_serve_config_rejects_a_misspelt_key(tmp_path):
    with pytest.raises(ConfigError, match=r"serve\.batching\.max_batch"):
        write_serve_config(tmp_path / "bad.yaml", batching={"max_batch": 8})
    assert not (tmp_path / "bad.yaml").exists()


def test_bench_env_caps_every_pool():
    env = bench_env(2)
    assert set(env) == set(THREAD_ENV_VARS)
    assert set(env.values()) == {"2"}
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            bench_env(bad)
