import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.inference import TextClassifier
from lmforge.models import (
    EncoderClassifier,
    ModelFormatError,
    load_model_dir,
    quantize_int8_dynamic,
    save_model_dir,
)
from lmforge.registry import ModelRegistry

LABELS = ["neg", "neu", "pos"]
TEXTS = ["The delivery was late.", "物流很快，非常满意。", "Great phone", "电池不耐用", "ok"]


def test_float_roundtrip_is_exact(tmp_path: Path, tiny_model: EncoderClassifier, tokenizer):
    out = save_model_dir(tmp_path / "m", tiny_model, tokenizer, LABELS)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "encoder-classifier"
    assert config["labels"] == LABELS and config["quantization"] is None
    assert config["model"]["d_model"] == 32 and config["pad_id"] == 0
    model, tok, _ = load_model_dir(out)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert tok.encode("物流很快").ids == tokenizer.encode("物流很快").ids


def test_int8_dir_is_smaller_and_reloads_the_same_weights(
    tmp_path: Path, tiny_model: EncoderClassifier, tokenizer
):
    fp = save_model_dir(tmp_path / "fp", tiny_model, tokenizer, LABELS)
    q = save_model_dir(tmp_path / "q", tiny_model, tokenizer, LABELS, quantization="int8_dynamic")
    size = (q / "model.safetensors").stat().st_size
    assert size < 0.7 * (fp / "model.safetensors").stat().st_size
    in_memory = TextClassifier(
        quantize_int8_dynamic(tiny_model),
        tokenizer,
        {
            "labels": LABELS,
            "model": {"max_len": 24},
            "pad_id": 0,
        },
    )
    loaded = TextClassifier.load(q)
    assert loaded.quantization == "int8_dynamic"
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), in_memory.predict_proba(TEXTS))
    # int8 stays close to float, and a float load of the int8 folder dequantises it.
    float_probs = TextClassifier.load(fp).predict_proba(TEXTS)
    assert np.abs(loaded.predict_proba(TEXTS) - float_probs).max() < 0.02
    dequant = TextClassifier.load(q, quantization=None)
    assert dequant.quantization is None
    assert np.abs(dequant.predict_proba(TEXTS) - float_probs).max() < 0.02


def test_predict_keeps_order_across_batch_sizes_and_threads(
    tmp_path: Path, tiny_model: EncoderClassifier, tokenizer
):
    clf = TextClassifier.load(save_model_dir(tmp_path / "m", tiny_model, tokenizer, LABELS))
    texts = TEXTS * 7
    full = clf.predict_proba(texts, batch_size=64)
    assert full.shape == (35, 3) and full.dtype == np.float32
    np.testing.assert_allclose(full.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clf.predict_proba(texts, batch_size=3), full, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: clf.predict_proba([t]), texts))
    np.testing.assert_allclose(np.concatenate(results), full, atol=1e-5)
    preds = clf.predict(texts[:2])
    assert preds[0]["label"] in LABELS and set(preds[0]["probs"]) == set(LABELS)
    assert preds[0]["label"] == max(preds[0]["probs"], key=preds[0]["probs"].get)
    ids, mask = clf.encode(["a b c", "a"])
    assert ids.shape == mask.shape and ids.dtype == torch.int64 and mask[1].sum() < mask[0].sum()


def test_errors_name_missing_file_and_architecture(
    tmp_path: Path, tiny_model: EncoderClassifier, tokenizer
):
    out = save_model_dir(tmp_path / "m", tiny_model, tokenizer, LABELS)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "architecture": "gpt"}))
    with pytest.raises(ModelFormatError, match="'gpt'"):
        load_model_dir(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json"):
        load_model_dir(out)
    with pytest.raises(ModelFormatError, match="2 labels"):
        save_model_dir(tmp_path / "x", tiny_model, tokenizer, ["a", "b"])
    with pytest.raises(ModelFormatError, match="int4"):
        save_model_dir(tmp_path / "x", tiny_model, tokenizer, LABELS, quantization="int4")


def test_shape_mismatch_is_a_format_error(tmp_path: Path, tiny_model: EncoderClassifier, tokenizer):
    out = save_model_dir(tmp_path / "m", tiny_model, tokenizer, LABELS)
    config = json.loads((out / "config.json").read_text())
    config["model"]["d_ff"] = 128
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="does not match"):
        load_model_dir(out)


def test_saving_twice_replaces_the_folder_and_registers(
    tmp_path: Path, tiny_model: EncoderClassifier, tokenizer
):
    out = tmp_path / "m"
    save_model_dir(out, tiny_model, tokenizer, LABELS, quantization="int8_dynamic")
    save_model_dir(out, tiny_model, tokenizer, LABELS)
    assert json.loads((out / "config.json").read_text())["quantization"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging leftovers
    version = ModelRegistry(tmp_path / "reg").register("demo", out, alias="production")
    assert TextClassifier.load(version.path).labels == LABELS
