"""The sharded, resumable cleaning run: same output whatever the workers, executor or crashes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.config import CorpusConfig, DataConfig
from lmforge.data.clean import clean_sources
from lmforge.demo import corpus_sources, generate_corpus

SHARD_DOCS = 150


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exec-corpus")
    generate_corpus(root, CorpusConfig(docs=1200, seed=3))
    return root


def _cfg(**extra) -> DataConfig:
    return DataConfig(shard_docs=SHARD_DOCS, **extra)


def content(out: Path) -> dict[str, object]:
    """Everything a user reads from a run's output, shard boundaries aside."""
    result: dict[str, object] = {}
    for part in ("clean", "rejected"):
        rows = []
        for shard in sorted((out / part).glob("part-*.parquet")):
            rows.extend(pq.read_table(shard).to_pylist())
        result[part] = rows
    return result


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exec-ref") / "out"
    stats = clean_sources(
        corpus_sources(corpus), out, _cfg(workers=1), ground_truth=corpus / "ground_truth.jsonl"
    )
    return out, stats


def test_run_writes_contract_and_removes_work_files(reference):
    out, stats = reference
    assert not (out / "_work").exists()
    clean = pq.read_table(out / "clean" / "part-00000.parquet")
    rejected = pq.read_table(out / "rejected" / "part-00000.parquet")
    assert {"id", "text", "source", "meta"} <= set(clean.column_names)
    assert {"id", "text", "source", "meta", "step", "reason"} <= set(rejected.column_names)
    saved = json.loads((out / "stats.json").read_text())
    assert (
        saved["docs_out"]
        == stats["docs_out"]
        == sum(pq.read_metadata(p).num_rows for p in (out / "clean").glob("part-*.parquet"))
    )
    steps = [s["step"] for s in stats["funnel"]]
    assert steps[0] == "read" and steps[-2:] == ["dedup", "near_dedup"]
    for a, b in zip(stats["funnel"], stats["funnel"][1:], strict=False):
        assert b["docs_in"] == a["docs_out"], (a["step"], b["step"])
    assert stats["docs_out"] + stats["docs_rejected"] == stats["docs_in"]
    assert stats["anomaly"]["thresholds"], "fitted thresholds are reported"
    assert stats["languages"].keys() <= {"zh", "en"}


def test_every_record_lands_exactly_once(reference):
    out, stats = reference
    got = content(out)
    ids = [r["id"] for r in got["clean"]] + [r["id"] for r in got["rejected"]]
    assert len(ids) == stats["docs_in"]
    # Only the malformed lines lack an id of their own; every other id is unique.
    read_ids = [r["id"] for r in got["rejected"] if r["step"] != "read"]
    assert len(set(read_ids + [r["id"] for r in got["clean"]])) == len(read_ids) + len(got["clean"])
    for row in got["rejected"]:
        if row["reason"] == "near_duplicate":
            survivor = json.loads(row["meta"])["duplicate_of"]
            assert survivor in {r["id"] for r in got["clean"]}


def test_worker_count_does_not_change_output(corpus, reference, tmp_path):
    out = tmp_path / "out"
    stats = clean_sources(corpus_sources(corpus), out, _cfg(workers=2))
    assert stats["executor"]["workers"] == 2
    assert content(out) == content(reference[0])


def test_finished_run_is_not_redone_but_a_config_change_is(corpus, tmp_path):
    out = tmp_path / "out"
    sources = corpus_sources(corpus)
    first = clean_sources(sources, out, _cfg(workers=1))
    again = clean_sources(sources, out, _cfg(workers=1))
    assert again["seconds"] == first["seconds"]  # read back, not recomputed
    changed = clean_sources(sources, out, _cfg(workers=1, min_chars=60))
    assert changed["docs_out"] < first["docs_out"]
    assert changed["fingerprint"] != first["fingerprint"]


def _cli(corpus: Path, out: Path) -> list[str]:
    args = [sys.executable, "-m", "lmforge.cli", "data", "clean"]
    args += [str(corpus / name) for name in ("web", "posts.jsonl")]
    args += ["--out", str(out), "--workers", "2", "--set", f"data.shard_docs={SHARD_DOCS}"]
    return args


@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_then_resume_gives_identical_output(corpus, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref_out = tmp_path / "ref"
    subprocess.run(_cli(corpus, ref_out), env=env, check=True, capture_output=True, timeout=120)
    out = tmp_path / "out"
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            _cli(corpus, out),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.5, 4.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers die with it
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 1
    final = subprocess.run(_cli(corpus, out), env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    assert content(out) == content(ref_out)


def test_ray_executor_matches_local(corpus, reference, tmp_path):
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's socket paths must stay short, so its temp folder is not the (long) tmp_path.
    ray_tmp = tempfile.mkdtemp(prefix="lmf-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False)
    try:
        out = tmp_path / "out"
        stats = clean_sources(corpus_sources(corpus), out, _cfg(executor="ray"))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stats["executor"]["name"] == "ray"
    assert content(out) == content(reference[0])


def test_a_second_run_in_the_same_process_uses_its_own_fitted_models(corpus, tmp_path):
    """Inline (one worker) runs share a process: models fitted for one config must not leak
    into the next run written to the same folder."""
    sources = corpus_sources(corpus)
    out = tmp_path / "out"
    first = clean_sources(sources, out, _cfg(workers=1, anomaly={"k": 2.0}))
    second = clean_sources(sources, out, _cfg(workers=1))
    fresh = clean_sources(sources, tmp_path / "fresh", _cfg(workers=1))
    assert first["docs_out"] != fresh["docs_out"]  # the two configs do differ
    assert second["docs_out"] == fresh["docs_out"]
    assert content(out) == content(tmp_path / "fresh")
