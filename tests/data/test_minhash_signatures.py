"""MinHash signatures: shingling rules, determinism across processes, parameter checks."""

import subprocess
import sys

import numpy as np
import pytest

from lmforge.data.minhash import MinHasher, MinHashParams, band_keys
from lmforge.data.shingles import canonical_text, hash_shingles, shingle_strings
from lmforge.errors import ConfigError, InputDataError

TEXTS = [
    "The battery easily lasts two full days, and pairing took about five seconds.",
    "充一次电能用两天，连上手机只要几秒钟，地铁里通话对方也听得清清楚楚。",
    "用iPhone拍照，效果很好！",
    "Ünïcode façade — naïve café, ½ price; emoji 🎉 and 𠀀 too.",
    "हिन्दी भाषा में लिखा गया वाक्य",
    "",
    "ok",
    "a\x00b c",
]

_DIGEST_SCRIPT = """
import hashlib, sys
from lmforge.data.minhash import MinHasher, MinHashParams
texts = sys.stdin.read().split("\\n---\\n")
sig = MinHasher(MinHashParams(seed=7)).signatures(texts)
print(hashlib.sha256(sig.tobytes()).hexdigest())
"""


def _digest_in_fresh_process(texts: list[str]) -> str:
    # A fresh interpreter gets a new PYTHONHASHSEED: any use of hash() would change the digest.
    done = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT],
        input="\n---\n".join(texts),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


def test_signatures_are_identical_in_two_fresh_processes():
    texts = [t for t in TEXTS if "\x00" not in t]
    first, second = _digest_in_fresh_process(texts), _digest_in_fresh_process(texts)
    assert first == second
    local = MinHasher(MinHashParams(seed=7)).signatures(texts)
    import hashlib

    assert hashlib.sha256(local.tobytes()).hexdigest() == first


def test_identical_texts_share_a_signature_and_other_texts_do_not():
    sig = MinHasher(MinHashParams()).signatures([TEXTS[0], TEXTS[1], TEXTS[0]])
    assert sig.shape == (3, 112) and sig.dtype == np.uint32
    assert np.array_equal(sig[0], sig[2])
    assert (sig[0] == sig[1]).mean() < 0.1


def test_signature_of_a_text_does_not_depend_on_its_batch():
    hasher = MinHasher(MinHashParams())
    filler = [f"filler text number {i} with a few more words" for i in range(2100)]
    batch = hasher.signatures([*filler, *TEXTS])
    alone = np.stack([hasher.signatures([t])[0] for t in TEXTS])
    assert np.array_equal(batch[len(filler) :], alone)


@pytest.mark.parametrize("text", TEXTS)
def test_hashed_shingles_match_the_reference_shingling(text):
    hasher = MinHasher(MinHashParams())
    assert len(hasher.shingles(text)) == len(set(shingle_strings(text, 5, 3)))


def test_lone_surrogates_and_separator_characters_only_separate_words():
    hasher = MinHasher(MinHashParams())
    broken = hasher.signatures(["left\udc80right and more words", "left\x00right and more words"])
    clean = hasher.signatures(["left right and more words"])
    assert np.array_equal(broken[0], clean[0]) and np.array_equal(broken[1], clean[0])


def test_shared_shingles_are_counted_like_the_reference():
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five SIX, seven eight nine eleven"
    hasher = MinHasher(MinHashParams())
    ref_a, ref_b = set(shingle_strings(a, 5, 3)), set(shingle_strings(b, 5, 3))
    got_a, got_b = hasher.shingles(a), hasher.shingles(b)
    assert (
        len(np.intersect1d(got_a, got_b)) == len(ref_a & ref_b) == 7
    )  # only "ten" -> "eleven" differs after folding


def test_canonical_text_and_shingle_modes():
    assert canonical_text("  Hello,\tWORLD!!  snake_case ") == "hello world snake case"
    # Latin text: word 3-grams; shorter than one shingle: the whole text
    assert shingle_strings("A b, c d.", 5, 3) == ["a b c", "b c d"]
    assert shingle_strings("Just two", 5, 3) == ["just two"]
    # CJK-dominant text: character 5-grams with spaces and punctuation removed
    assert shingle_strings("你好，世界 再见", 5, 3) == ["你好世界再", "好世界再见"]
    # Mostly Latin letters with a little Han: words
    assert shingle_strings("the 手 is fine here today", 5, 3)[0] == "the 手 is"


def test_batch_marks_cjk_texts():
    batch = hash_shingles(["这是一段中文文本", "plain english words here"], 5, 3)
    assert batch.cjk.tolist() == [True, False]
    assert batch.offsets.tolist() == [0, 4, 6]


def test_params_that_do_not_divide_raise_config_error():
    with pytest.raises(ConfigError, match="bands=10 does not divide num_perm=112"):
        MinHashParams(num_perm=112, bands=10)
    with pytest.raises(ConfigError, match="threshold"):
        MinHashParams(threshold=1.5)
    with pytest.raises(ConfigError, match="word_ngram"):
        MinHashParams(word_ngram=-1)
    sig = MinHasher(MinHashParams()).signatures(["some text"])
    with pytest.raises(ConfigError, match="bands=5"):
        band_keys(sig, 5)
    with pytest.raises(InputDataError, match="2-D"):
        band_keys(sig[0], 14)


def test_band_keys_follow_band_contents():
    sig = MinHasher(MinHashParams()).signatures(TEXTS[:2])
    other = sig.copy()
    other[1, :8] = sig[0, :8]  # band 0 of row 1 now equals band 0 of row 0
    keys = band_keys(other, 14)
    assert keys.shape == (2, 14) and keys.dtype == np.uint64
    assert keys[0, 0] == keys[1, 0]
    assert not np.any(keys[0, 1:] == keys[1, 1:])
    # a shard whose signatures came back as int64 (e.g. through Arrow) must still collide
    assert np.array_equal(band_keys(other.astype(np.int64), 14), keys)
    with pytest.raises(InputDataError, match="outside uint32"):
        band_keys(other.astype(np.int64) - 2**40, 14)
