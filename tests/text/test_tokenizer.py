from pathlib import Path

import pytest

from lmforge.errors import InputDataError
from lmforge.text.tokenizer import (
    PAD_ID,
    SPECIAL_TOKENS,
    TokenizerError,
    encode_texts,
    learn_wordpiece_vocab,
    load_tokenizer,
    pad_batch,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "The delivery was late and the box was damaged.",
    "Great phone, the battery lasts two days.",
    "物流很快，包装完好，非常满意。",
    "电池不耐用，屏幕也有划痕。",
    "Café owners complained about the delivery fees.",
] * 10


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300, min_frequency=2)


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert PAD_ID == 0


def test_chinese_splits_into_characters_and_english_lowercases(tok):
    enc = tok.encode("物流很快 The CAFÉ")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert enc.tokens[1:5] == ["物", "流", "很", "快"]
    assert "the" in enc.tokens and "cafe" in enc.tokens


def test_encode_texts_truncates_and_keeps_sep(tok):
    long = "电池不耐用 " * 100
    ids = encode_texts(tok, [long, "great"], max_len=16)
    assert len(ids[0]) == 16
    assert ids[0][0] == tok.token_to_id("[CLS]") and ids[0][-1] == tok.token_to_id("[SEP]")
    assert ids[1] == tok.encode("great").ids


def test_pad_batch_pads_to_longest():
    input_ids, mask = pad_batch([[2, 7, 3], [2, 3]])
    assert input_ids.tolist() == [[2, 7, 3], [2, 3, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_save_load_roundtrip(tok, tmp_path: Path):
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(path)
    assert again.encode("物流很快 great phone").ids == tok.encode("物流很快 great phone").ids


def test_load_errors_name_the_file(tmp_path: Path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=r"bad\.json"):
        load_tokenizer(bad)


def test_training_on_nothing_is_a_data_error():
    with pytest.raises(InputDataError):
        train_tokenizer([], vocab_size=100)


def test_training_is_deterministic():
    a = train_tokenizer(TEXTS, vocab_size=300)
    b = train_tokenizer(list(reversed(TEXTS)), vocab_size=300)
    assert a.to_str() == b.to_str()


def test_vocab_learning_merges_the_most_frequent_pair_first():
    vocab = learn_wordpiece_vocab({"abab": 10, "abc": 3, "xy": 1}, vocab_size=100)
    alphabet = {"a", "##b", "##a", "##c", "x", "##y"}  # every character is kept
    assert set(vocab[:6]) == alphabet
    learned = vocab[6:]  # then the merges, in order
    assert learned[:2] == ["ab", "##ab"]  # (a, ##b) 13 times, then (##a, ##b) 10 times
    assert "xy" not in vocab  # below min_frequency=2
    capped = learn_wordpiece_vocab({"abab": 10, "abc": 3}, vocab_size=len(SPECIAL_TOKENS) + 3)
    assert len(capped) == 3
