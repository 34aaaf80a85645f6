import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.bench.loadgen import (
    default_texts,
    drive_load,
    load_eval_texts,
    predict_url,
    run_bench,
)
from lmforge.bench.server_process import free_port
from lmforge.config import BenchConfig
from lmforge.errors import InputDataError


def test_closed_loop_load_reports_throughput_and_percentiles(live_url):
    cfg = BenchConfig(duration_s=1.0, warmup_s=0.2, concurrency=4)
    started = time.perf_counter()
    result = run_bench(live_url, cfg, default_texts())
    wall = time.perf_counter() - started
    assert result["requests"] > 10
    assert result["errors"] == 0
    assert result["by_status"] == {"200": result["requests"]}
    assert result["warmup_requests"] > 0  # warmup ran and was kept out of the numbers
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert 1.0 <= result["duration_s"] < 3.0 and wall < 5.0
    rps = result["requests"] / result["duration_s"]
    assert result["requests_per_second"] == pytest.approx(rps, rel=0.01)
    assert result["concurrency"] == 4


def test_max_requests_caps_the_run(live_url):
    cfg = BenchConfig(duration_s=30.0, warmup_s=0.0, concurrency=3)
    started = time.perf_counter()
    result = run_bench(live_url, cfg, ["hello"], max_requests=7)
    assert result["requests"] == 7
    assert time.perf_counter() - started < 10.0


def test_refused_requests_are_errors_by_status(live_url):
    # The live server accepts at most 2 texts per request.
    cfg = BenchConfig(duration_s=0.5, warmup_s=0.0, concurrency=2, texts_per_request=3)
    result = run_bench(live_url, cfg, default_texts())
    assert result["requests"] > 0
    assert result["errors"] == result["requests"]
    assert result["by_status"] == {"422": result["requests"]}
    assert result["p50_ms"] == 0.0  # percentiles are over successful requests only


def test_dead_server_is_counted_and_bounded_in_time():
    cfg = BenchConfig(duration_s=0.5, warmup_s=0.0, concurrency=2)
    started = time.perf_counter()
    result = run_bench(f"http://127.0.0.1:{free_port()}", cfg, ["hi"], max_requests=500)
    assert time.perf_counter() - started < 5.0
    assert result["requests"] > 0 and result["errors"] == result["requests"]
    assert set(result["by_status"]) == {"ConnectionRefusedError"}


def test_load_records_every_latency(live_url):
    import asyncio

    cfg = BenchConfig(duration_s=0.5, warmup_s=0.0, concurrency=2, texts_per_request=2)
    result = asyncio.run(drive_load(live_url, cfg, default_texts()))
    assert len(result.latencies_ms) == len(result.statuses) == result.summary()["requests"]
    assert all(ms > 0 for ms in result.latencies_ms)
    assert result.summary()["texts_per_second"] == pytest.approx(
        2 * result.summary()["requests_per_second"], rel=0.01
    )


def test_predict_url_accepts_base_or_full_url():
    assert predict_url("http://h:1") == "http://h:1/v1/predict"
    assert predict_url("http://h:1/") == "http://h:1/v1/predict"
    assert predict_url("http://h:1/v1/predict") == "http://h:1/v1/predict"
    with pytest.raises(InputDataError, match="must start with http"):
        predict_url("localhost:8000")


def test_eval_texts_come_from_the_split(tmp_path):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["one", "two"], "label": ["a", "b"]}), path)
    assert load_eval_texts(path) == ["one", "two"]
    assert load_eval_texts(path, limit=1) == ["one"]
    with pytest.raises(InputDataError, match="eval split not found"):
        load_eval_texts(tmp_path / "missing.parquet")
    assert any("物流" in t for t in default_texts())
