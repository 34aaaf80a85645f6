import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lmforge.compress import compress_model
from lmforge.compress.measure import (
    batches_for,
    file_size_mb,
    load_eval_split,
    measure_accuracy,
    measure_latency_ms,
    state_dict_bytes,
)
from lmforge.errors import ConfigError, InputDataError
from lmforge.inference import TextClassifier
from lmforge.models.export import is_quantized, save_model_dir

TEXTS = ["The box was crushed.", "Love it!", "请问可以开发票吗？", "Does it ship abroad?"]


@pytest.fixture(scope="module")
def float_clf(tiny_model_dir):
    return TextClassifier.load(tiny_model_dir)


def test_int8_dynamic_swaps_every_linear_and_keeps_predictions(float_clf):
    q = compress_model(float_clf.model, "int8_dynamic")
    assert is_quantized(q) and not is_quantized(float_clf.model)  # the original is untouched
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    ids, mask = float_clf.encode(TEXTS)
    with torch.inference_mode():
        ref = torch.softmax(float_clf.model(ids, mask), -1)
        got = torch.softmax(q(ids, mask), -1)
    assert torch.allclose(ref, got, atol=0.02)


def test_unknown_method_and_double_quantisation_are_refused(float_clf):
    with pytest.raises(ConfigError, match="unknown compression method 'int4'"):
        compress_model(float_clf.model, "int4")
    with pytest.raises(ConfigError, match="already quantised"):
        compress_model(compress_model(float_clf.model, "int8_dynamic"), "int8_dynamic")


def test_sizes_are_serialized_weights_and_agree_with_memory(float_clf, tiny_model_dir, tmp_path):
    q = compress_model(float_clf.model, "int8_dynamic")
    out = save_model_dir(tmp_path / "q", q, float_clf.tokenizer, float_clf.labels, "int8_dynamic")
    before, after = file_size_mb(tiny_model_dir), file_size_mb(out)
    assert before * 1e6 == (tiny_model_dir / "model.safetensors").stat().st_size
    assert after < 0.8 * before
    # The file is the tensors plus a JSON header: memory and disk agree within the header.
    assert state_dict_bytes(float_clf.model) == pytest.approx(before * 1e6, abs=8_000)
    assert state_dict_bytes(q) == pytest.approx(after * 1e6, abs=8_000)
    linear_params = sum(
        m.weight.numel() for m in float_clf.model.modules() if isinstance(m, torch.nn.Linear)
    )
    # Each Linear weight drops from 4 bytes to 1 per element.
    saved = state_dict_bytes(float_clf.model) - state_dict_bytes(q)
    assert saved == pytest.approx(3 * linear_params, rel=0.05)


def test_latency_is_positive_per_variant_and_restores_threads(float_clf):
    threads = torch.get_num_threads()
    q = TextClassifier(
        compress_model(float_clf.model, "int8_dynamic"), float_clf.tokenizer, float_clf.config
    )
    result = measure_latency_ms({"fp32": float_clf, "int8": q}, TEXTS, [1, 8], 3, threads=1)
    assert set(result) == {"fp32", "int8"}
    assert all(set(v) == {1, 8} for v in result.values())
    assert all(ms > 0 for v in result.values() for ms in v.values())
    assert torch.get_num_threads() == threads


def test_batches_wrap_around_the_texts():
    assert batches_for(["a", "b", "c"], 2, 3) == [["a", "b"], ["c", "a"], ["b", "c"]]
    with pytest.raises(InputDataError):
        batches_for([], 1, 1)


def test_accuracy_matches_a_hand_count(float_clf):
    predicted = [p["label"] for p in float_clf.predict(TEXTS)]
    gold = [predicted[0], predicted[1], "nope", "nope"]
    assert measure_accuracy(float_clf, TEXTS, gold) == 0.5
    probs = float_clf.predict_proba(TEXTS)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_eval_split_drops_unlabelled_rows_and_honours_the_cap(tmp_path):
    path = tmp_path / "eval.parquet"
    table = pa.table({"id": ["1", "2", "3"], "text": ["a", "b", "c"], "label": ["x", None, "y"]})
    pq.write_table(table, path)
    assert load_eval_split(path) == (["a", "c"], ["x", "y"])
    assert load_eval_split(path, limit=1) == (["a"], ["x"])
    with pytest.raises(InputDataError, match="run the train stage first"):
        load_eval_split(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"id": ["1"], "text": ["a"]}), path)
    with pytest.raises(InputDataError, match=r"lacks the columns \['label'\]"):
        load_eval_split(path)
