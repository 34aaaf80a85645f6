"""The Chinese name trainer on a tiny synthetic corpus, and numpy inference matching torch."""

import itertools
import random
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lmforge.data.names.msra import TAG_B, TAG_I, TAG_O, parse_lines, split_sentences, tag_spans
from lmforge.data.names.train_zh import (
    TorchTagger,
    TrainConfig,
    build_vocab,
    main,
    save_weights,
    swap_names,
)
from lmforge.data.names.zh_tagger import (
    TaggerConfig,
    load_tagger,
    normalize,
    transition_mask,
    viterbi,
)
from lmforge.errors import ConfigError, InputDataError

SURNAMES = "张王李赵刘陈杨黄周吴"
GIVEN = ["伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "军", "小明", "建国", "海燕"]
TEMPLATES = [
    "记者{}报道，今年粮食产量创新高。",
    "{}说这个项目明年完成。",
    "昨天{}去了学校。",
    "老师{}表扬了全班同学。",
    "市长{}在会上讲话。",
]
FILLERS = ["今天天气很好。", "工厂的产量提高了。", "城市的交通越来越方便。"]


def synthetic_lines(n: int, seed: int = 0) -> list[str]:
    """MSRA-format lines (char<TAB>tag, blank between sentences) with planted names."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 4 == 3:
            text, name_at, name = rng.choice(FILLERS), -1, ""
        else:
            name = rng.choice(SURNAMES) + rng.choice(GIVEN)
            template = rng.choice(TEMPLATES)
            name_at = template.index("{}")
            text = template.format(name)
        text = text + "第" + str(i) + "条"  # distinct sentences, so the hash split spreads them
        for k, ch in enumerate(text):
            if name_at <= k < name_at + len(name):
                tag = "B-PER" if k == name_at else "I-PER"
            else:
                tag = "O" if ch not in "北京" else "B-LOC"
            lines.append(f"{ch}\t{tag}")
        lines.append("")
    return lines


def test_parse_maps_other_entities_to_o_and_stray_i_to_b():
    sents = parse_lines(["张\tB-PER", "三\tI-PER", "在\tO", "京\tB-LOC", "", "伟\tI-PER", "说\tO"])
    assert [s.text for s in sents] == ["张三在京", "伟说"]
    assert sents[0].tags == (TAG_B, TAG_I, TAG_O, TAG_O)
    assert sents[1].tags == (TAG_B, TAG_O)
    assert tag_spans(sents[0].tags) == [(0, 2)]


def test_parse_rejects_malformed_lines():
    with pytest.raises(InputDataError, match="line 2"):
        parse_lines(["张\tB-PER", "not a pair"])


def test_split_is_deterministic_and_disjoint():
    sents = parse_lines(synthetic_lines(400))
    a, b = split_sentences(sents), split_sentences(list(reversed(sents)))
    assert {s.text for s in a.test} == {s.text for s in b.test}
    assert 10 < len(a.test) < 80
    train_texts = {s.text for s in a.train}
    assert not train_texts & {s.text for s in a.test}
    assert not train_texts & {s.text for s in a.dev}


def test_trainer_smoke_writes_a_loadable_deterministic_model(tmp_path, capsys):
    data = tmp_path / "msra_ner.zip"
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("dh_msra.txt", "\n".join(synthetic_lines(500)))
    small = ["--subset", "300", "--epochs", "3", "--lr", "0.01", "--batch-size", "16"]
    small += ["--width", "24", "--char-dim", "16", "--bigram-dim", "8"]
    written = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        assert main(["--msra", str(data), "--out", str(out), *small]) == 0
        with safe_open(str(out / "zh_person.safetensors"), framework="np") as fh:
            written.append((fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}))  # noqa: SIM118
    (meta_a, tensors_a), (meta_b, tensors_b) = written
    assert meta_a == meta_b  # same data and seed: the same model
    assert tensors_a.keys() == tensors_b.keys()
    assert all(np.array_equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    assert "held-out test PER" in capsys.readouterr().out
    tagger = load_tagger(tmp_path / "a" / "zh_person.safetensors")
    assert '"f1"' in tagger.metadata["test_per"]
    assert set(SURNAMES) <= tagger.surnames
    text = "记者王建国报道，今年粮食产量创新高。"
    assert tagger.spans([text]) == [[(2, 5)]]  # a name pattern seen in training


def test_trainer_rejects_a_missing_corpus_and_bad_options(tmp_path):
    with pytest.raises(InputDataError, match="--msra"):
        main(["--msra", str(tmp_path / "none.zip"), "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="--out"):
        main(["--msra", "x.zip", "--out", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="--dilations"):
        main(["--msra", "x.zip", "--out", str(tmp_path), "--dilations", "1,two"])


def test_numpy_tagger_matches_torch_twin(tmp_path):
    torch.manual_seed(0)
    sents = parse_lines(synthetic_lines(60))
    vocab = build_vocab(sents, TrainConfig())
    model = TorchTagger(
        TaggerConfig(char_dim=8, bigram_dim=4, width=12, dilations=(1, 3, 2)), vocab
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p).half().float())  # exact in the float16 file
    model.eval()
    path = tmp_path / "w.safetensors"
    save_weights(model, vocab, "张", path, {})
    tagger = load_tagger(path)
    texts = ["张伟说", "记者李娜报道，今年粮食产量创新高。Ｘ", "王"]
    em, lengths = tagger.emissions(texts)
    for j, text in enumerate(texts):
        one, _ = tagger.emissions([text])
        np.testing.assert_allclose(em[j, : len(text)], one[0], rtol=1e-4, atol=1e-4)
        chars, bigrams = (torch.tensor([ids]) for ids in tagger.vocab.encode(normalize(text)))
        with torch.no_grad():
            ref = model.emissions(chars, bigrams)[0].numpy()
        np.testing.assert_allclose(one[0], ref, rtol=1e-3, atol=1e-3)
    assert lengths.tolist() == [len(t) for t in texts]


def test_missing_and_corrupt_weights_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(InputDataError, match=r"absent\.safetensors.*train_zh"):
        load_tagger(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputDataError, match=r"corrupt\.safetensors.*train_zh"):
        load_tagger(corrupt)


def _path_score(q, em, trans, start, end):
    s = start[q[0]] + em[0, q[0]] + end[q[-1]]
    return s + sum(trans[q[i - 1], q[i]] + em[i, q[i]] for i in range(1, len(q)))


def test_viterbi_and_crf_loss_agree_with_brute_force():
    rng = np.random.default_rng(0)
    trans_mask, start_mask = transition_mask()
    trans = rng.normal(size=(3, 3)).astype(np.float32) + trans_mask
    start = rng.normal(size=3).astype(np.float32) + start_mask
    end = rng.normal(size=3).astype(np.float32)
    lengths = np.array([5, 1, 3])
    em = rng.normal(size=(3, 5, 3)).astype(np.float32)
    paths = viterbi(em, lengths, trans, start, end)
    nll = 0.0
    tags = np.zeros((3, 5), dtype=np.int64)
    for j, n in enumerate(lengths):
        every = list(itertools.product(range(3), repeat=int(n)))
        scores = [_path_score(q, em[j], trans, start, end) for q in every]
        assert paths[j] == list(every[int(np.argmax(scores))])
        assert paths[j][0] != TAG_I  # a name never starts with I
        tags[j, :n] = paths[j]
        nll += np.logaddexp.reduce(scores) - max(scores)
    model = TorchTagger(TaggerConfig(width=4), build_vocab([], TrainConfig()))
    with torch.no_grad():
        model.crf["trans"].copy_(torch.from_numpy(trans - trans_mask))
        model.crf["start"].copy_(torch.from_numpy(start - start_mask))
        model.crf["end"].copy_(torch.from_numpy(end))
        mask = torch.arange(5)[None, :] < torch.from_numpy(lengths)[:, None]
        loss = model.nll(torch.from_numpy(em), torch.from_numpy(tags), mask)
    assert float(loss) == pytest.approx(nll / 3, rel=1e-4)


def test_swap_names_keeps_context_and_retags():
    sent = parse_lines(["记\tO", "者\tO", "张\tB-PER", "三\tI-PER", "说\tO", ""])[0]
    swapped = swap_names(sent, ["欧阳小明"], np.random.default_rng(0), p=1.0)
    assert swapped.text == "记者欧阳小明说"
    assert tag_spans(swapped.tags) == [(2, 6)]
    assert swap_names(sent, ["欧阳小明"], np.random.default_rng(0), p=0.0) == sent
