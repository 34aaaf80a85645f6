"""Encoder options (BERT layout), old fused-qkv folders, and pipeline stages."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import ConfigError
from lmforge.inference import TextClassifier
from lmforge.models import (
    EncoderClassifier,
    EncoderConfig,
    load_model_dir,
    quantize_int8_dynamic,
    save_model_dir,
)
from lmforge.models.encoder import encoder_config
from lmforge.models.export import ModelFormatError
from lmforge.parallel.protocol import ParallelModel, model_layers

LABELS = ["neg", "neu", "pos"]
TEXTS = ["The delivery was late.", "物流很快，非常满意。", "Great phone", "电池不耐用", "ok"]
BERT_LAYOUT = dict(
    norm_position="post",
    embed_norm=True,
    type_vocab_size=2,
    norm_eps=1e-12,
    pooling="cls",
    activation="gelu_tanh",
)


def small_config(**kw) -> EncoderConfig:
    base = dict(vocab_size=60, n_classes=3, d_model=16, n_layers=3, n_heads=4, d_ff=32)
    return EncoderConfig(**{**base, "max_len": 12, "dropout": 0.0, **kw})


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 60, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2] = 0  # an all-padding row
    return ids * mask, mask


def test_post_norm_bert_layout_changes_outputs_but_keeps_names():
    torch.manual_seed(0)
    pre = EncoderClassifier(small_config()).eval()
    torch.manual_seed(0)
    post = EncoderClassifier(small_config(norm_position="post")).eval()
    # Same parameters, same values; only the order of norm and residual differs.
    assert pre.state_dict().keys() - post.state_dict().keys() == {
        "ln_final.weight",
        "ln_final.bias",
    }
    with torch.no_grad():
        a, b = pre(*batch()), post(*batch())
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    torch.manual_seed(0)
    bert = EncoderClassifier(small_config(**BERT_LAYOUT)).eval()
    names = set(bert.state_dict())
    assert {"type_emb.weight", "emb_norm.weight", "emb_norm.bias"} <= names
    assert bert.emb_norm.eps == 1e-12 and bert.blocks["0"].ln_attn.eps == 1e-12
    with torch.no_grad():
        assert torch.isfinite(bert(*batch())).all()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("norm_position", "middle"),
        ("pooling", "max"),
        ("activation", "swish"),
        ("type_vocab_size", -1),
        ("norm_eps", 0.0),
    ],
)
def test_bad_options_name_the_value(key: str, value):
    with pytest.raises(ConfigError, match=f"{key}={value!r}" if isinstance(value, str) else key):
        small_config(**{key: value})


def test_options_round_trip_and_old_configs_get_the_old_defaults(tmp_path: Path, tokenizer):
    torch.manual_seed(0)
    cfg = small_config(vocab_size=tokenizer.get_vocab_size(), **BERT_LAYOUT)
    model = EncoderClassifier(cfg).eval()
    out = save_model_dir(tmp_path / "bert", model, tokenizer, LABELS)
    loaded, _, config = load_model_dir(out)
    assert loaded.config == cfg and config["model"]["norm_position"] == "post"
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))

    # A folder written before the options existed: its config.json has none of them.
    plain_cfg = small_config(vocab_size=cfg.vocab_size)
    plain = save_model_dir(tmp_path / "plain", EncoderClassifier(plain_cfg), tokenizer, LABELS)
    config = json.loads((plain / "config.json").read_text())
    for key in BERT_LAYOUT:
        del config["model"][key]
    (plain / "config.json").write_text(json.dumps(config))
    assert load_model_dir(plain)[0].config == plain_cfg


def _fuse_qkv(model_dir: Path) -> None:
    """Rewrite a float folder the way it was stored before q, k and v were split."""
    tensors = load_file(str(model_dir / "model.safetensors"))
    for key in [k for k in tensors if ".attn.q." in k]:
        prefix, suffix = key.split(".attn.q.")
        parts = [tensors.pop(f"{prefix}.attn.{n}.{suffix}") for n in "qkv"]
        tensors[f"{prefix}.attn.qkv.{suffix}"] = torch.cat(parts).contiguous()
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def _old_int8_qkv(model: EncoderClassifier, block: str) -> dict[str, torch.Tensor]:
    """What an old int8 folder held for one fused qkv: one per-tensor scale for all three."""
    attn = model.blocks[block].attn
    fused = torch.nn.Linear(16, 48)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
        fused.bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
    qlinear = quantize_int8_dynamic(torch.nn.Sequential(fused))[0]
    weight = qlinear.weight()
    prefix = f"blocks.{block}.attn.qkv"
    return {
        f"{prefix}.weight": weight.int_repr(),
        f"{prefix}.weight_scale": torch.tensor([weight.q_scale()], dtype=torch.float64),
        f"{prefix}.weight_zero_point": torch.tensor([weight.q_zero_point()]),
        f"{prefix}.bias": qlinear.bias().detach(),
    }


def test_an_old_fused_qkv_folder_loads_and_predicts_the_same(tmp_path: Path, tiny_model, tokenizer):
    new = save_model_dir(tmp_path / "new", tiny_model, tokenizer, LABELS)
    expected = TextClassifier.load(new).predict_proba(TEXTS)
    old = save_model_dir(tmp_path / "old", tiny_model, tokenizer, LABELS)
    _fuse_qkv(old)
    assert any(".attn.qkv." in k for k in load_file(str(old / "model.safetensors")))
    model, _, _ = load_model_dir(old)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert (TextClassifier.load(old).predict_proba(TEXTS) == expected).all()


def test_an_old_fused_qkv_int8_folder_loads_its_int8_weights(tmp_path: Path, tokenizer):
    torch.manual_seed(0)
    model = EncoderClassifier(small_config(vocab_size=tokenizer.get_vocab_size())).eval()
    old = save_model_dir(tmp_path / "old", model, tokenizer, LABELS, "int8_dynamic")
    tensors = load_file(str(old / "model.safetensors"))
    for block in model.blocks:
        for n in "qkv":
            for suffix in ("weight", "weight_scale", "weight_zero_point", "bias"):
                del tensors[f"blocks.{block}.attn.{n}.{suffix}"]
        tensors.update(_old_int8_qkv(model, block))
    save_file(tensors, str(old / "model.safetensors"), metadata={"format": "pt"})

    loaded, _, _ = load_model_dir(old)
    for block in model.blocks:
        fused = tensors[f"blocks.{block}.attn.qkv.weight"]
        scale = float(tensors[f"blocks.{block}.attn.qkv.weight_scale"])
        for n, rows in zip("qkv", fused.chunk(3), strict=True):
            weight = getattr(loaded.blocks[block].attn, n).weight()
            assert torch.equal(weight.int_repr(), rows) and weight.q_scale() == scale
    # The int8 model stays close to float, and a float load dequantises the same grid.
    float_probs = TextClassifier(model, tokenizer, json.loads((old / "config.json").read_text()))
    expected = float_probs.predict_proba(TEXTS)
    assert abs(TextClassifier.load(old).predict_proba(TEXTS) - expected).max() < 0.02
    dequantised = TextClassifier.load(old, quantization=None).predict_proba(TEXTS)
    assert abs(dequantised - expected).max() < 0.02


def test_a_damaged_fused_qkv_is_refused(tmp_path: Path, tiny_model, tokenizer):
    old = save_model_dir(tmp_path / "old", tiny_model, tokenizer, LABELS)
    tensors = load_file(str(old / "model.safetensors"))
    tensors["blocks.0.attn.qkv.bias"] = torch.zeros(7)
    save_file(tensors, str(old / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"blocks\.0\.attn\.qkv\.bias has 7 rows"):
        load_model_dir(old)


def test_parallel_declarations():
    model = EncoderClassifier(small_config())
    assert isinstance(model, ParallelModel)
    assert list(model_layers(model)) == ["0", "1", "2"]
    assert model.tp_divisors() == {"n_heads": 4, "d_ff": 32}
    plan = model.tensor_parallel_plan()
    assert set(plan) == {
        f"blocks.*.{m}" for m in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.down")
    }
    assert type(plan["blocks.*.attn.q"]).__name__ == "ColwiseParallel"
    assert type(plan["blocks.*.mlp.down"]).__name__ == "RowwiseParallel"
    # Every pattern names real modules.
    names = {n for n, _ in model.named_modules()}
    for pattern in plan:
        assert f"blocks.0.{pattern.split('*.')[1]}" in names


def test_attention_reads_its_head_count_from_the_projection_width():
    """A column shard of q/k/v (two of four heads) runs as a two-head attention."""
    torch.manual_seed(0)
    attn = EncoderClassifier(small_config()).blocks["0"].attn.eval()
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    with torch.no_grad():
        full_y = {}
        attn.out.register_forward_hook(lambda m, inp, out: full_y.update(y=inp[0]))
        attn(x, mask)
        for proj in (attn.q, attn.k, attn.v):  # keep the first two heads' columns
            proj.weight.data, proj.bias.data = proj.weight[:8], proj.bias[:8]
        attn.out.weight.data = attn.out.weight[:, :8]
        shard_y = {}
        attn.out.register_forward_hook(lambda m, inp, out: shard_y.update(y=inp[0]))
        attn(x, mask)
    torch.testing.assert_close(shard_y["y"], full_y["y"][..., :8])


@pytest.mark.parametrize("layout", [{}, BERT_LAYOUT], ids=["pre-norm", "bert"])
@pytest.mark.parametrize("split", [[["0", "1"], ["2"]], [["0"], ["1"], ["2"]]], ids=["2", "3"])
def test_pipeline_stages_chained_give_the_full_logits(layout, split):
    torch.manual_seed(0)
    full = EncoderClassifier(small_config(**layout)).eval()
    full_names = set(full.state_dict())
    ids, mask = batch()
    with torch.no_grad():
        expected = full(ids, mask)
    stages = []
    for i, keys in enumerate(split):
        stage = EncoderClassifier(small_config(**layout))
        stage.load_state_dict(full.state_dict())
        stages.append(stage.pipeline_stage(keys, first=i == 0, last=i == len(split) - 1).eval())
        names = set(stages[-1].state_dict())
        assert names < full_names
        assert {n.split(".")[1] for n in names if n.startswith("blocks.")} == set(keys)
    assert stages[0].head is None and stages[-1].tok_emb is None
    with torch.no_grad():
        out = stages[0](ids, mask)
        for stage in stages[1:]:
            assert isinstance(out, tuple) and out[1].dtype == torch.float32
            out = stage(*out)
    assert torch.equal(out, expected)


def test_pipeline_stage_refuses_unknown_layers():
    with pytest.raises(ValueError, match=r"\['7'\]"):
        EncoderClassifier(small_config()).pipeline_stage(["0", "7"], first=True, last=False)


def test_encoder_presets():
    cfg = encoder_config("small", 1000, 4, max_len=64)
    assert (cfg.d_model, cfg.n_layers, cfg.max_len, cfg.n_classes) == (384, 6, 64, 4)
    with pytest.raises(ConfigError, match="'huge'"):
        encoder_config("huge", 1000, 2)
    with pytest.raises(ConfigError, match="d_modle"):
        encoder_config("tiny", 1000, 2, d_modle=3)
