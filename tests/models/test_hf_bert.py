"""Hugging Face BERT import/export against `transformers.BertModel` itself."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import ConfigError
from lmforge.models import EncoderClassifier, EncoderConfig, load_model_dir, save_model_dir
from lmforge.models.export import ModelFormatError
from lmforge.models.hf_bert import load_hf_bert, load_hf_tokenizer, minilm_l6_dir, save_hf_bert
from lmforge.text.tokenizer import encode_texts, pad_batch

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The delivery was late and the box was damaged.",
    "Great phone, the battery lasts two days!",
    "物流很快，包装完好，非常满意。",
    "ok",
    "Can I change my delivery address after ordering? 这个套餐每个月多少钱？",
]


def tokens(tok, max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch(encode_texts(tok, SENTENCES, max_len))
    return torch.from_numpy(ids), torch.from_numpy(mask)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling."""
    weights = mask.unsqueeze(-1).float()
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def hf_hidden(model_dir: Path, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hf = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    model, tok = load_hf_bert(minilm_l6_dir(), n_classes=3)
    return model, tok


def test_minilm_matches_transformers(minilm):
    model, tok = minilm
    cfg = model.config
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.norm_position) == (384, 6, 12, "post")
    ids, mask = tokens(tok)
    assert mask.min() == 0  # the batch is padded
    # Our tokenizer gives the ids transformers' own tokenizer gives.
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_l6_dir()))
    expected = hf_tok(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(expected["input_ids"], ids)

    with torch.no_grad():
        ours = model.encode(ids, mask)
        logits = model(ids, mask)
    theirs = hf_hidden(minilm_l6_dir(), ids, mask)
    assert (ours - theirs).abs().max() < 1e-4
    pooled = model.pool(ours, mask)
    assert (pooled - mean_pool(theirs, mask)).abs().max() < 1e-4
    assert logits.shape == (len(SENTENCES), 3)


def test_minilm_exports_and_reloads(minilm, tmp_path: Path):
    model, tok = minilm
    out = save_hf_bert(model, tok, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    ids, mask = tokens(tok)
    with torch.no_grad():
        ours = model.encode(ids, mask)
    assert (hf_hidden(out, ids, mask) - ours).abs().max() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok(SENTENCES[2])["input_ids"] == tok.encode(SENTENCES[2]).ids

    again, tok2 = load_hf_bert(out, n_classes=3)
    assert again.config == model.config
    heads = {"head.weight", "head.bias"}
    for key, value in model.state_dict().items():
        if key not in heads:
            assert torch.equal(again.state_dict()[key], value), key
    assert tok2.encode(SENTENCES[0]).ids == tok.encode(SENTENCES[0]).ids


def _random_bert() -> tuple[transformers.BertModel, transformers.BertConfig]:
    config = transformers.BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        hidden_act="gelu_new",
        layer_norm_eps=1e-7,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():  # BERT's init leaves LayerNorms at 1/0; give them real values
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model, config


def _vocab_dir(out: Path) -> None:
    """The tokenizer files: MiniLM's vocabulary cut to 120 entries, vocab.txt only."""
    words = (minilm_l6_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (out / "vocab.txt").write_text("\n".join(words[:120]) + "\n", encoding="utf-8")
    shutil.copy(minilm_l6_dir() / "tokenizer_config.json", out)


@pytest.mark.parametrize("variant", ["safetensors", "bin-with-prefix"])
def test_a_random_bert_imports_with_parity(tmp_path: Path, variant: str):
    hf, config = _random_bert()
    out = tmp_path / variant
    if variant == "safetensors":
        hf.save_pretrained(out)
        assert (out / "model.safetensors").is_file()
    else:  # a task model's pickle: every name under "bert.", plus a head to ignore
        out.mkdir()
        config.save_pretrained(out)
        state = {f"bert.{k}": v for k, v in hf.state_dict().items()}
        state["classifier.weight"] = torch.zeros(2, 32)
        torch.save(state, out / "pytorch_model.bin")
    _vocab_dir(out)
    model, tok = load_hf_bert(out, n_classes=2)
    assert model.config.activation == "gelu_tanh" and model.config.norm_eps == 1e-7
    assert tok.get_vocab_size() == 120
    ids = torch.randint(1, 120, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        ours = model.encode(ids * mask, mask)
        theirs = hf(input_ids=ids * mask, attention_mask=mask).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-5


def test_overrides_and_an_lmforge_model_dir_of_an_import(tmp_path: Path):
    hf, _ = _random_bert()
    hf.save_pretrained(tmp_path / "hf")
    _vocab_dir(tmp_path / "hf")
    model, tok = load_hf_bert(tmp_path / "hf", n_classes=2, max_len=16, pooling="cls")
    assert model.pos_emb.weight.shape == (16, 32) and model.config.pooling == "cls"
    with pytest.raises(ConfigError, match="d_model"):
        load_hf_bert(tmp_path / "hf", n_classes=2, d_model=64)
    with pytest.raises(ConfigError, match="max_len=41"):
        load_hf_bert(tmp_path / "hf", n_classes=2, max_len=41)
    # Fine-tuned in lmforge, it is saved and served like any lmforge model.
    out = save_model_dir(tmp_path / "m", model, tok, ["a", "b"])
    loaded, _, _ = load_model_dir(out)
    ids, mask = tokens(tok, max_len=16)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_vocab_txt_tokenizer_matches_tokenizer_json(tmp_path: Path):
    shutil.copy(minilm_l6_dir() / "vocab.txt", tmp_path)
    shutil.copy(minilm_l6_dir() / "tokenizer_config.json", tmp_path)
    from_vocab = load_hf_tokenizer(tmp_path)
    from_json = load_hf_tokenizer(minilm_l6_dir())
    for text in SENTENCES:
        assert from_vocab.encode(text).ids == from_json.encode(text).ids
    assert from_json.padding is None and from_json.truncation is None


def test_a_missing_tensor_is_named(tmp_path: Path):
    hf, _ = _random_bert()
    hf.save_pretrained(tmp_path / "m")
    _vocab_dir(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, str(weights))
    with pytest.raises(ModelFormatError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        load_hf_bert(tmp_path / "m", n_classes=2)


def test_unsupported_checkpoints_and_models_are_refused(tmp_path: Path):
    hf, _ = _random_bert()
    hf.save_pretrained(tmp_path / "m")
    _vocab_dir(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "position_embedding_type": "relative_key"}))
    with pytest.raises(ModelFormatError, match="relative_key"):
        load_hf_bert(tmp_path / "m", n_classes=2)
    path.write_text(json.dumps({**raw, "model_type": "roberta"}))
    with pytest.raises(ModelFormatError, match="roberta"):
        load_hf_bert(tmp_path / "m", n_classes=2)

    pre_norm = EncoderClassifier(EncoderConfig(vocab_size=120, n_classes=2, d_model=16))
    with pytest.raises(ModelFormatError, match="norm_position='pre'"):
        save_hf_bert(pre_norm, load_hf_tokenizer(tmp_path / "m"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
