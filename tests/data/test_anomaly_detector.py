"""Anomaly detection: document features, the character LM and per-language thresholds."""

import json
import math
import time

import numpy as np
import pytest
from demo_posts import generated_posts

from lmforge.data.anomaly import (
    DIRECTIONS,
    FEATURE_NAMES,
    MIN_SCALE,
    SHORT_TEXT_PRIOR,
    SHORT_TEXT_PRIOR_TOKENS,
    AnomalyDetector,
    CharLanguageModel,
    batch_features,
    document_features,
)
from lmforge.errors import ConfigError, InputDataError

F = {name: i for i, name in enumerate(FEATURE_NAMES)}

GIBBERISH = [
    "xqzkvbw pqmznrt ljkhgf zzxqv",
    "asdfghjkl qwrtyp zxcvbnm",
    "kjq vvz pxq wqz jjkx qqpz vbnx",
    "ʁʭʬ ʯʮ ʣʤʥ ʦʧʨ",
    "qwpoeiruty zmxncbv lkjhgfdsa poiu",
]


def review_texts(folder, seed: int, docs: int = 2000) -> list[str]:
    """The clean posts of a small generated demo corpus (ground truth: no noise)."""
    return [text for text, planted in generated_posts(folder, seed, docs) if not planted]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """Fitting and held-out clean reviews from two different seeds. The character LM needs
    a few thousand reviews to know the everyday Chinese character pairs."""
    root = tmp_path_factory.mktemp("anomaly")
    return review_texts(root / "a", seed=11, docs=6000), review_texts(root / "b", seed=12)


def lang_of(text: str) -> str:
    return "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en"


# --- features ----------------------------------------------------------------------------


def feat(text: str) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, document_features(text, None).tolist(), strict=True))


def test_features_are_one_float_vector_and_lm_score_is_nan_without_a_model():
    vec = document_features("The kettle boils fast.", None)
    assert vec.dtype == np.float64 and vec.shape == (len(FEATURE_NAMES),)
    assert math.isnan(vec[F["lm_score"]])
    assert not np.isnan(vec[:-1]).any()
    assert feat("")["log_length"] == 0.0


def test_repeated_lines_raise_the_duplicate_line_ratio():
    repeated = "Buy now at our shop\nBuy now at our shop\nBuy now at our shop\nThanks"
    distinct = "The kettle is loud\nThe handle stays cool\nDelivery was fast"
    assert feat(repeated)["dup_line_ratio"] == pytest.approx(38 / 63)
    assert feat(distinct)["dup_line_ratio"] == 0.0


def test_character_class_ratios():
    f = feat("Order 12345 67890 ok")
    # numbers are a share of the tokens plus SHORT_TEXT_PRIOR_TOKENS, symbols of the
    # characters plus SHORT_TEXT_PRIOR
    assert f["digit_ratio"] == pytest.approx(2 / (4 + SHORT_TEXT_PRIOR_TOKENS))
    assert f["letter_ratio"] == pytest.approx(7 / 17)
    assert feat("!!! $$$ ### ok")["symbol_ratio"] == pytest.approx(9 / (11 + SHORT_TEXT_PRIOR))
    # a price is one token: a review quoting two sits far below a log of dates and times
    prices = feat("1299买了好几个了 还行 现在1249")["digit_ratio"]
    log = feat("付款 2009-6-12 0:51:00 打印 2009-6-13 9:36:00 出库 2009-6-13 9:41:00")[
        "digit_ratio"
    ]
    assert prices < log / 3
    assert feat("电池续航很好")["cjk_share"] == 1.0
    assert feat("battery is good")["cjk_share"] == 0.0
    assert feat("电池很好 good")["cjk_share"] == pytest.approx(4 / 5)  # a word weighs one token
    brand = feat("外观漂亮，电池比较耐用，硬盘很安静（Seagate的，比msiU90的WD好）")["cjk_share"]
    assert brand > 0.85


def test_upper_ratio_needs_enough_latin_letters():
    assert feat("CLICK HERE FOR FREE GIFT CARDS TODAY")["upper_ratio"] == 1.0
    assert feat("Click here for free gift cards today")["upper_ratio"] == pytest.approx(1 / 30)
    assert feat("配套APP很好用,OK")["upper_ratio"] == 0.0  # a brand is not shouting


def test_masked_pii_placeholders_are_not_read_as_text():
    plain = feat("请联系我的手机。谢谢")
    masked = feat("请联系我的手机[PHONE]。谢谢")
    assert masked["cjk_share"] == 1.0
    assert masked["upper_ratio"] == plain["upper_ratio"] == 0.0
    assert masked["log_length"] == plain["log_length"]


def test_repetition_features_separate_spam_from_prose():
    spam = "cheap phones at example dot com " * 8
    prose = "The kettle boils fast, the handle stays cool and the lid closes with a click."
    assert feat(spam)["repeated_ngram_coverage"] == 1.0
    assert feat(prose)["repeated_ngram_coverage"] == 0.0
    assert feat("说不上好也说不上坏,说不上好也说不上坏。")["repeated_ngram_coverage"] == 0.0
    assert feat("哈哈哈哈哈哈哈哈")["repeated_ngram_coverage"] == 0.0  # emphasis, not a flood
    assert feat(spam)["compression_ratio"] > 3 * feat(prose)["compression_ratio"]
    assert feat("xqzkvbwpqmznrtljkhgfzz")["mean_token_length"] == 22.0
    assert feat("电池很好")["mean_token_length"] == 1.0


def test_batch_features_match_single_documents(reviews):
    fit, held = reviews
    lm = CharLanguageModel.fit(fit)
    texts = [*held[:20], "", "a\x00b", *GIBBERISH]
    batch = batch_features(texts, lm)
    single = np.stack([document_features(t, lm) for t in texts])
    np.testing.assert_allclose(batch, single, rtol=1e-12)
    assert batch_features([], lm).shape == (0, len(FEATURE_NAMES))


# --- the character LM --------------------------------------------------------------------


def test_lm_scores_gibberish_and_foreign_text_below_real_reviews(reviews):
    fit, held = reviews
    lm = CharLanguageModel.fit(fit)
    real = lm.score_batch(held)
    english = lm.score_batch([t for t in held if lang_of(t) == "en"])
    junk = lm.score_batch(GIBBERISH)
    foreign = lm.score_batch(
        ["Die Lieferung hat leider über eine Stunde gedauert.", "Très déçu par la qualité."]
    )
    assert junk.max() < np.quantile(real, 0.01)
    assert foreign.max() < np.quantile(english, 0.01)


def test_lm_batch_scores_equal_one_by_one_scores(reviews):
    fit, held = reviews
    lm = CharLanguageModel.fit(fit)
    texts = ["", "ok", *held[:10], "contains\x00a nul", "İstanbul İzmir", "ok"]
    batch = lm.score_batch(texts)
    np.testing.assert_allclose(batch, [lm.score(t) for t in texts], rtol=1e-12)


def test_lm_round_trips_through_json_with_identical_scores(reviews):
    fit, held = reviews
    lm = CharLanguageModel.fit(fit, buckets=1 << 16)
    data = json.loads(json.dumps(lm.to_dict()))
    again = CharLanguageModel.from_dict(data)
    assert np.array_equal(again.score_batch(held), lm.score_batch(held))
    assert len(json.dumps(data)) < 200_000  # compact enough to ship to every worker


def test_lm_is_fast_enough(reviews):
    fit, held = reviews
    lm = CharLanguageModel.fit(fit)
    texts = (held * (5000 // len(held) + 1))[:5000]
    best = min(_timed(lm.score_batch, texts) for _ in range(3))
    assert len(texts) / best >= 20_000


def _timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def test_lm_rejects_bad_settings_and_dicts():
    with pytest.raises(ConfigError, match="power of two"):
        CharLanguageModel.fit(["abc"], buckets=1000)
    with pytest.raises(InputDataError, match="no texts"):
        CharLanguageModel.fit([])
    with pytest.raises(InputDataError, match="CharLanguageModel dict"):
        CharLanguageModel.from_dict({"kind": "char_bigram", "buckets": 4})


# --- the detector ------------------------------------------------------------------------


def synthetic(rows: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=1.0, scale=0.2, size=(rows, len(FEATURE_NAMES)))
    return x + shift


def test_thresholds_are_fitted_from_the_data():
    base = AnomalyDetector.fit(synthetic(1000, 0), ["en"] * 1000, k=5)
    moved = AnomalyDetector.fit(synthetic(1000, 0, shift=3.0), ["en"] * 1000, k=5)
    for name in FEATURE_NAMES:
        a, b = base.thresholds()["en"][name], moved.thresholds()["en"][name]
        assert b["median"] == pytest.approx(a["median"] + 3.0)
        assert b["mad"] == pytest.approx(a["mad"])
        for side in ("low", "high"):
            assert (a[side] is None) == (b[side] is None)
            if a[side] is not None:
                assert b[side] == pytest.approx(a[side] + 3.0)
    lm = base.thresholds()["en"]["lm_score"]
    assert lm["low"] == pytest.approx(lm["median"] - 5 * 1.4826 * lm["mad"])


def test_only_the_noise_side_of_each_feature_fires():
    det = AnomalyDetector.fit(synthetic(1000, 1), ["en"] * 1000)
    stats = det.thresholds()["en"]
    for name, (low, high) in DIRECTIONS.items():
        assert (stats[name]["low"] is not None) == low
        assert (stats[name]["high"] is not None) == high
    row = np.full((1, len(FEATURE_NAMES)), 1.0)
    row[0, F["lm_score"]] = 50.0  # far too typical is fine
    assert det.flag(row, ["en"]) == [None]
    row[0, F["lm_score"]] = -50.0
    assert det.flag(row, ["en"]) == ["anomaly:lm_score_low"]


def test_the_reason_names_the_feature_furthest_past_its_threshold():
    det = AnomalyDetector.fit(synthetic(1000, 2), ["en"] * 1000)
    row = np.full((1, len(FEATURE_NAMES)), 1.0)
    row[0, F["digit_ratio"]] = 10.0
    row[0, F["compression_ratio"]] = 30.0
    assert det.flag(row, ["en"]) == ["anomaly:compression_ratio_high"]


def test_thresholds_are_fitted_per_language_group():
    zh, en = synthetic(500, 3), synthetic(500, 4, shift=2.0)
    det = AnomalyDetector.fit(np.vstack([zh, en]), ["zh"] * 500 + ["en"] * 500)
    assert set(det.thresholds()) == {"all", "zh", "en"}
    typical_en = np.full((1, len(FEATURE_NAMES)), 3.0)
    assert det.flag(typical_en, ["en"]) == [None]
    assert det.flag(typical_en, ["zh"]) != [None]  # the same row is an outlier for Chinese


def test_small_groups_are_judged_by_the_fitted_groups_and_the_pooled_table():
    x = np.vstack([synthetic(500, 5), synthetic(50, 6, shift=0.5)])
    groups = ["en"] * 500 + ["other"] * 50
    det = AnomalyDetector.fit(x, groups, min_group_rows=200)
    assert set(det.thresholds()) == {"all", "en"}
    assert det.fallback == ("en", "all")  # "other" rows had no group of their own
    probe = synthetic(300, 7, shift=2.0)
    as_other = det.flag(probe, ["other"] * 300)
    assert as_other == det.flag(probe, ["ko"] * 300)
    under_both = [
        e is not None and a is not None
        for e, a in zip(det.flag(probe, ["en"] * 300), det.flag(probe, ["all"] * 300), strict=True)
    ]
    assert [f is not None for f in as_other] == under_both
    assert 0 < sum(under_both) < sum(f is not None for f in det.flag(probe, ["en"] * 300))


def test_an_unseen_language_is_flagged_only_as_an_outlier_for_every_fitted_one():
    zh, en = synthetic(500, 13), synthetic(500, 14, shift=2.0)
    zh[:, F["cjk_share"]], en[:, F["cjk_share"]] = 1.0, 0.0
    det = AnomalyDetector.fit(np.vstack([zh, en]), ["zh"] * 500 + ["en"] * 500)
    assert det.fallback == ("en", "zh")
    rows = np.vstack([zh[:1], en[:1], en[:1]])
    rows[2, F["lm_score"]] = 0.5  # unlike English, a typical Chinese LM score, Latin script
    assert det.flag(rows, ["other"] * 3) == [None, None, "anomaly:lm_score_low"]
    assert det.flag(rows[2:3], ["en"]) == ["anomaly:lm_score_low"]
    assert det.flag(rows[2:3], ["zh"]) == ["anomaly:cjk_share_low"]


def test_pooled_thresholds_do_not_call_one_language_an_outlier_of_another():
    # 300 English and 100 Chinese rows, too few Chinese for a group of their own.
    x = synthetic(400, 12)
    x[:300, F["cjk_share"]], x[300:, F["cjk_share"]] = 0.0, 1.0
    x[:300, F["mean_token_length"]], x[300:, F["mean_token_length"]] = 4.5, 1.0
    groups = ["en"] * 300 + ["zh"] * 100
    det = AnomalyDetector.fit(x, groups, min_group_rows=200)
    assert set(det.thresholds()) == {"all", "en"}
    assert not any(det.flag(x[300:], groups[300:]))
    mixed = x[:1].copy()
    mixed[0, F["cjk_share"]] = 0.5  # half Chinese: odd for English, fine for the pooled rows
    assert det.flag(mixed, ["en"]) == ["anomaly:cjk_share_high"]
    assert det.flag(mixed, ["zh"]) == [None]


def test_mad_floor_keeps_constant_features_from_flagging_every_change():
    x = synthetic(500, 8)
    x[:, F["digit_ratio"]] = 0.0  # clean reviews: no digits at all
    det = AnomalyDetector.fit(x, ["en"] * 500, k=6)
    high = det.thresholds()["en"]["digit_ratio"]["high"]
    assert high == pytest.approx(6 * MIN_SCALE["digit_ratio"])
    row = np.full((2, len(FEATURE_NAMES)), 1.0)
    row[:, F["digit_ratio"]] = [0.05, 0.6]  # a price in a review vs a table of numbers
    assert det.flag(row, ["en", "en"]) == [None, "anomaly:digit_ratio_high"]


def test_nan_features_never_fire():
    x = synthetic(500, 9)
    x[:, F["lm_score"]] = np.nan
    det = AnomalyDetector.fit(x, ["en"] * 500)
    assert det.thresholds()["en"]["lm_score"]["low"] is None
    row = np.full((1, len(FEATURE_NAMES)), 1.0)
    row[0, F["lm_score"]] = np.nan
    assert det.flag(row, ["en"]) == [None]


def test_detector_round_trips_through_json_and_fits_deterministically():
    x, groups = synthetic(800, 10), ["zh"] * 400 + ["en"] * 400
    det = AnomalyDetector.fit(x, groups, k=4)
    again = AnomalyDetector.from_dict(json.loads(json.dumps(det.to_dict())))
    probe = synthetic(300, 11, shift=0.3)
    probe_groups = ["zh", "en", "other"] * 100
    assert again.flag(probe, probe_groups) == det.flag(probe, probe_groups)
    assert again.thresholds() == det.thresholds()
    assert AnomalyDetector.fit(x, groups, k=4).to_dict() == det.to_dict()


def test_detector_rejects_bad_input():
    with pytest.raises(InputDataError, match="shape"):
        AnomalyDetector.fit(np.zeros((10, 3)), ["en"] * 10)
    with pytest.raises(InputDataError, match="groups"):
        AnomalyDetector.fit(synthetic(10, 0), ["en"] * 9)
    with pytest.raises(ConfigError, match="k=0"):
        AnomalyDetector.fit(synthetic(10, 0), ["en"] * 10, k=0)
    with pytest.raises(InputDataError, match="AnomalyDetector dict"):
        AnomalyDetector.from_dict({"kind": "robust_z", "k": 6, "features": ["x"], "groups": {}})


def test_detector_is_conservative_on_clean_reviews_and_catches_junk(reviews):
    fit, held = reviews
    lm = CharLanguageModel.fit(fit)
    det = AnomalyDetector.fit(batch_features(fit, lm), [lang_of(t) for t in fit])
    flags = det.flag(batch_features(held, lm), [lang_of(t) for t in held])
    # 1.5 %: an LM fitted on ~1,500 reviews still misses some everyday Chinese character
    # pairs; on the 20k-document bench the clean share flagged is far lower.
    assert sum(f is not None for f in flags) / len(held) <= 0.015
    junk = [
        *GIBBERISH,
        "CLICK HERE www.win.example.net " * 6,
        "12345 67890 12345 67890 12345 67890 ok",
        "Die Lieferung hat leider über eine Stunde gedauert.",
    ]
    junk_flags = det.flag(batch_features(junk, lm), [lang_of(t) for t in junk])
    assert all(f is not None for f in junk_flags), junk_flags


def test_a_feature_side_never_flags_more_than_max_rate_of_its_sample():
    from lmforge.data.anomaly import MAX_RATE

    rng = np.random.default_rng(0)
    x = np.zeros((5000, len(FEATURE_NAMES)))
    x[:, F["log_length"]] = rng.normal(4.0, 0.5, 5000)
    x[:, F["letter_ratio"]] = 0.9
    # heavy tail: most texts have no digits, 5 % have many (times, prices in short reviews)
    x[:, F["digit_ratio"]] = np.where(rng.random(5000) < 0.05, rng.uniform(0.1, 0.4, 5000), 0.0)
    det = AnomalyDetector.fit(x, ["zh"] * 5000)
    flagged = [r for r in det.flag(x, ["zh"] * 5000) if r == "anomaly:digit_ratio_high"]
    assert len(flagged) <= MAX_RATE * 5000 + 1


def test_acronyms_in_chinese_text_are_not_shouting():
    text = (
        "1、LG W800是全球首款基于AMR9 CPU并且支持UniJa和JTWT业务的双模式手机，支持CDMA和GSM两种网络"
    )
    assert feat(text)["upper_ratio"] == 0.0
