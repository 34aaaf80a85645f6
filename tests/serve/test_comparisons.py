import sqlite3
import threading
import time

import pytest

from lmforge.errors import LmforgeError
from lmforge.serve.comparisons import (
    Comparison,
    FeedbackError,
    ServingStore,
    ServingStoreError,
    compare_predictions,
)


def _pred(probs: dict[str, float]) -> dict:
    return {"label": max(probs, key=probs.__getitem__), "probs": probs}


def _comparison(model: str = "m", request_id: str = "r1", at: float = 100.0) -> Comparison:
    return compare_predictions(
        model,
        request_id,
        [_pred({"a": 0.7, "b": 0.3}), _pred({"a": 0.2, "b": 0.8})],
        [_pred({"a": 0.6, "b": 0.4}), _pred({"a": 0.55, "b": 0.45})],
        primary_version=1,
        shadow_version=2,
        primary_latency_s=0.01,
        shadow_latency_s=0.02,
        at=at,
    )


def test_compare_predictions_agreement_and_label_order():
    c = compare_predictions(
        "m",
        "r",
        [_pred({"x": 0.9, "y": 0.1}), _pred({"x": 0.4, "y": 0.6})],
        [_pred({"y": 0.2, "x": 0.7, "z": 0.1}), _pred({"x": 0.5, "y": 0.2, "z": 0.3})],
        1,
        2,
        0.001,
        0.002,
    )
    assert c.labels == ["x", "y", "z"]  # primary's order, then shadow-only labels
    assert c.primary_probs == [[0.9, 0.1, 0.0], [0.4, 0.6, 0.0]]
    assert c.shadow_probs == [[0.7, 0.2, 0.1], [0.5, 0.2, 0.3]]
    assert (c.agree_count, c.texts) == (1, 2)
    assert c.agreement == 0.5


def test_compare_predictions_rejects_count_mismatch():
    with pytest.raises(ValueError, match="one per text"):
        compare_predictions("m", "r", [_pred({"a": 1.0})], [], 1, 2, 0.0, 0.0)


def test_round_trip(tmp_path):
    store = ServingStore(tmp_path)
    c = _comparison()
    store.record_comparison(c)
    store.record_comparison(_comparison(request_id="r2", at=200.0))
    store.record_comparison(_comparison(model="other", at=150.0))
    assert store.comparisons("m") == []  # buffered until flush
    store.flush()
    got = store.comparisons("m")
    assert [g.request_id for g in got] == ["r1", "r2"]
    assert got[0] == c  # probs are short enough to survive the rounding exactly
    assert [g.request_id for g in store.comparisons("m", since=150.0)] == ["r2"]
    assert [g.request_id for g in store.comparisons("m", limit=1)] == ["r2"]  # newest N
    assert store.models() == ["m", "other"]
    store.close()
    assert (tmp_path / "serving.sqlite").exists()
    with sqlite3.connect(tmp_path / "serving.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_probs_are_rounded(tmp_path):
    with ServingStore(tmp_path) as store:
        c = compare_predictions(
            "m", "r", [_pred({"a": 1 / 3, "b": 2 / 3})], [_pred({"a": 0.5, "b": 0.5})], 1, 2, 0, 0
        )
        store.record_comparison(c)
        store.flush()
        got = store.comparisons("m")[0]
    assert got.primary_probs == [[0.33333, 0.66667]]


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(ServingStoreError, match="shadow"):
        ServingStore(tmp_path / "nowhere", create=False)


def test_feedback_flushes_on_miss_and_attributes_variant(tmp_path):
    store = ServingStore(tmp_path)
    store.record_assignment("req-1", "m", 3, "challenger", key="user-7", at=50.0)
    # still buffered: the store must flush before deciding the id is unknown
    result = store.record_feedback("req-1", 1.0)
    assert (result.model, result.version, result.variant, result.outcome) == (
        "m",
        3,
        "challenger",
        1.0,
    )
    assert not result.replaced
    again = store.record_feedback("req-1", 0.25)
    assert again.replaced
    assert store.feedback_by_variant("m") == {"challenger": [0.25]}
    # the window filters on when the request was served
    assert store.feedback_by_variant("m", since=60.0) == {}
    store.close()


def test_feedback_unknown_id_and_bad_outcome(tmp_path):
    store = ServingStore(tmp_path, retention_days=7)
    with pytest.raises(FeedbackError, match=r"unknown request id 'nope'.*predict.*7 days"):
        store.record_feedback("nope", 1.0)
    store.record_assignment("r", "m", 1, "production", None)
    for bad in (1.5, -0.1, float("nan"), "yes"):
        with pytest.raises(FeedbackError, match="between 0 and 1"):
            store.record_feedback("r", bad)
    assert isinstance(FeedbackError("x"), LmforgeError)
    assert store.record_feedback("r", True).outcome == 1.0  # a success flag
    store.close()


def test_bounded_buffer_drops_and_counts(tmp_path):
    store = ServingStore(tmp_path, max_buffer=10)
    for i in range(25):
        store.record_assignment(f"r{i}", "m", 1, "production", None)
    assert store.pending == 10
    assert store.dropped == 15
    store.flush()
    assert store.assignment_counts("m") == {"production": 10}
    store.close()


def test_two_stores_writing_concurrently_lose_nothing(tmp_path):
    stores = [ServingStore(tmp_path), ServingStore(tmp_path)]
    for s in stores:
        s.start_background_flush(interval_s=0.01)
    per_thread = 400
    now = time.time()  # recent: the background flusher prunes rows past the retention

    def write(store: ServingStore, tag: str) -> None:
        for i in range(per_thread):
            store.record_assignment(f"{tag}-{i}", "m", 1, tag, None)
            store.record_comparison(_comparison(request_id=f"{tag}-{i}", at=now + i))

    threads = [threading.Thread(target=write, args=(stores[i % 2], f"t{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert all(s.dropped == 0 for s in stores)
    reader = ServingStore(tmp_path, create=False)
    assert reader.assignment_counts("m") == {f"t{i}": per_thread for i in range(4)}
    assert len(reader.comparisons("m")) == 4 * per_thread
    reader.close()


def test_close_flushes_and_is_idempotent(tmp_path):
    store = ServingStore(tmp_path)
    store.start_background_flush(interval_s=60)
    store.record_comparison(_comparison())
    store.close()
    store.close()
    with pytest.raises(ServingStoreError, match="closed"):
        store.comparisons("m")
    assert len(ServingStore(tmp_path).comparisons("m")) == 1


def test_prune_removes_old_rows(tmp_path):
    store = ServingStore(tmp_path, retention_days=1)
    store.record_assignment("old", "m", 1, "production", None, at=0.0)
    store.record_assignment("new", "m", 1, "production", None, at=10 * 86400.0)
    store.record_comparison(_comparison(at=0.0))
    store.flush()
    assert store.prune(now=10 * 86400.0 + 1) == 2
    assert store.assignment_counts("m") == {"production": 1}
    assert store.comparisons("m") == []
    store.close()


def test_invalid_settings(tmp_path):
    with pytest.raises(ServingStoreError, match="max_buffer"):
        ServingStore(tmp_path, max_buffer=0)
    with pytest.raises(ServingStoreError, match="limit"):
        ServingStore(tmp_path).comparisons("m", limit=0)


def test_an_unstorable_row_is_dropped_not_retried_forever(tmp_path):
    store = ServingStore(tmp_path)
    store.record_assignment("bad", "m", 1, "production", "k\udfff")  # a lone surrogate
    store.record_assignment("good", "m", 1, "production", "user-1")
    store.flush()  # must not raise, and must not keep the bad row for the next flush
    assert store.dropped == 1 and store.pending == 0
    assert store.record_feedback("good", 1.0).variant == "production"
    store.record_assignment("later", "m", 1, "canary", None)
    store.flush()
    assert store.assignment_counts("m") == {"production": 1, "canary": 1}
    store.close()
