"""The learned noise model: trained on weak labels, a pickle-free file, a chosen threshold."""

import json
import zipfile

import numpy as np
import pytest
from demo_posts import generated_posts

from lmforge.data.evaluate import REMOVAL_KINDS
from lmforge.data.noise_model import HashingParams, NoiseModel, evaluate
from lmforge.errors import ConfigError, InputDataError

# Small hash spaces keep the tests fast; the defaults are for real corpora.
SMALL = HashingParams(char_features=1 << 16, word_features=1 << 14)


def posts_with_labels(folder, seed: int, docs: int) -> tuple[list[str], list[bool]]:
    """Posts of a generated demo corpus: noisy when the ground truth plants a removal kind
    (junk markup, gibberish, spam, wrong language, too short), clean when it plants nothing."""
    texts, noisy = [], []
    for text, planted in generated_posts(folder, seed, docs):
        if planted and not planted & REMOVAL_KINDS:
            continue  # duplicates, PII, mojibake: other steps' job
        texts.append(text)
        noisy.append(bool(planted))
    return texts, noisy


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise-model")
    return posts_with_labels(root / "train", 21, 2500), posts_with_labels(root / "test", 22, 1500)


@pytest.fixture(scope="module")
def model(corpora):
    (texts, noisy), _ = corpora
    return NoiseModel.fit(texts, noisy, seed=0, params=SMALL)


def test_model_separates_junk_from_real_reviews_on_another_corpus(model, corpora):
    _, (texts, noisy) = corpora
    truth = np.array(noisy)
    assert truth.sum() >= 50 and (~truth).sum() >= 300
    proba = model.predict_proba(texts)
    assert proba.shape == (len(texts),)
    assert ((proba >= 0) & (proba <= 1)).all()
    scores = evaluate(model.predict(texts), noisy)
    assert scores["precision"] >= 0.9
    assert scores["recall"] >= 0.7
    assert (proba[~truth] >= model.threshold).mean() <= 0.02  # clean reviews it would drop


def test_threshold_is_chosen_on_held_out_weak_labels(model, corpora):
    (texts, noisy), _ = corpora
    report = model.fit_report
    assert 0.5 <= model.threshold <= 1.0
    assert report["train_docs"] + report["holdout_docs"] == len(texts)
    assert report["holdout_docs"] == pytest.approx(0.2 * len(texts), abs=2)
    assert report["holdout_noisy"] == pytest.approx(0.2 * sum(noisy), abs=1)
    assert report["holdout_precision"] >= 0.9
    assert report["holdout_clean_dropped_rate"] <= 0.005


def test_a_stricter_precision_target_never_lowers_the_threshold(corpora):
    (texts, noisy), _ = corpora
    loose = NoiseModel.fit(texts, noisy, seed=0, params=SMALL, min_precision=0.6)
    strict = NoiseModel.fit(texts, noisy, seed=0, params=SMALL, min_precision=1.0)
    assert strict.threshold >= loose.threshold
    assert np.array_equal(strict.coef, loose.coef)  # same split, same training rows


def test_fit_is_deterministic(model, corpora):
    (texts, noisy), _ = corpora
    again = NoiseModel.fit(texts, noisy, seed=0, params=SMALL)
    assert np.array_equal(again.coef, model.coef)
    assert again.intercept == model.intercept
    assert again.threshold == model.threshold


def test_save_load_round_trip_without_pickle(model, corpora, tmp_path):
    _, (texts, _) = corpora
    path = model.save(tmp_path / "noise.npz")
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"coef_index", "coef_value", "intercept", "meta"}
        assert all(data[name].dtype != object for name in data.files)
        meta = json.loads(str(data["meta"]))
    assert meta["threshold"] == model.threshold
    with zipfile.ZipFile(path) as zf:  # every member is a plain .npy array
        assert all(zf.read(name)[:6] == b"\x93NUMPY" for name in zf.namelist())
    loaded = NoiseModel.load(path)
    assert np.array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    assert loaded.threshold == model.threshold
    assert loaded.params == model.params
    assert loaded.fit_report == model.fit_report


def test_a_path_without_suffix_gets_npz(model, tmp_path):
    written = model.save(tmp_path / "fit" / "noise_model")
    assert written.name == "noise_model.npz" and written.is_file()
    assert NoiseModel.load(tmp_path / "fit" / "noise_model").threshold == model.threshold


def test_human_labels_outweigh_weak_ones(corpora):
    (texts, noisy), _ = corpora
    odd = "Five stars, fast delivery, would buy again from this shop."
    base = NoiseModel.fit(texts, noisy, seed=0, params=SMALL)
    taught = NoiseModel.fit(
        texts, noisy, seed=0, params=SMALL, labelled=[(odd, True)] * 3, labelled_weight=20.0
    )
    assert taught.fit_report["labelled_docs"] == 3
    assert taught.predict_proba([odd])[0] > base.predict_proba([odd])[0] + 0.2


def test_sample_weight_changes_the_fit(corpora):
    (texts, noisy), _ = corpora
    weights = np.where(np.array(noisy), 3.0, 1.0)
    base = NoiseModel.fit(texts, noisy, seed=0, params=SMALL)
    weighted = NoiseModel.fit(texts, noisy, seed=0, params=SMALL, sample_weight=weights)
    probe = texts[:50]
    assert weighted.predict_proba(probe).mean() > base.predict_proba(probe).mean()


def test_evaluate_counts():
    scores = evaluate([True, True, False, False, True], [True, False, True, False, True])
    assert scores["tp"] == 2 and scores["fp"] == 1 and scores["fn"] == 1
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["support"] == 3 and scores["predicted"] == 3
    none = evaluate([False, False], [False, False])
    assert none["precision"] is None and none["recall"] is None and none["f1"] is None
    with pytest.raises(InputDataError, match="predictions"):
        evaluate([True], [True, False])


def test_bad_input_is_a_one_line_error(tmp_path):
    texts = [f"text {i}" for i in range(40)]
    with pytest.raises(InputDataError, match="labels"):
        NoiseModel.fit(texts, [True] * 39)
    with pytest.raises(InputDataError, match="at least 10 noisy"):
        NoiseModel.fit(texts, [False] * 40)
    with pytest.raises(InputDataError, match="sample_weight"):
        NoiseModel.fit(texts, [True, False] * 20, sample_weight=[1.0] * 3)
    with pytest.raises(ConfigError, match="holdout"):
        NoiseModel.fit(texts, [True, False] * 20, holdout=1.5)
    with pytest.raises(ConfigError, match="char_ngrams"):
        HashingParams(char_ngrams=(3, 1))
    with pytest.raises(InputDataError, match="not found"):
        NoiseModel.load(tmp_path / "missing.npz")
    broken = tmp_path / "broken.npz"
    np.savez(broken, coef_index=np.zeros(1, np.int64))
    with pytest.raises(InputDataError, match="not a saved noise model"):
        NoiseModel.load(broken)
