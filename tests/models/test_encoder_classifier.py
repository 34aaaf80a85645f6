import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.models.encoder import SelfAttention


def test_logits_shape_and_padding_invariance(tiny_model: EncoderClassifier):
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    mask = torch.ones_like(ids)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = tiny_model(ids, mask)
        in_batch = tiny_model(padded, padded_mask)
    assert alone.shape == (1, 3)
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=1e-5)


def test_all_padding_row_gives_finite_logits(tiny_model: EncoderClassifier):
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.isfinite(tiny_model(ids, mask)).all()


def test_too_long_input_is_refused(tiny_model: EncoderClassifier):
    n = tiny_model.config.max_len + 1
    with pytest.raises(ValueError, match="max_len"):
        tiny_model(torch.ones(1, n, dtype=torch.long), torch.ones(1, n))


def test_sdpa_attention_matches_reference():
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=50, n_classes=2, d_model=16, n_heads=4, d_ff=32, dropout=0.0)
    attn = SelfAttention(cfg).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        fast = attn(x, mask[:, None, None, :])
        # Reference: explicit softmax(QK^T / sqrt(d)) with masked keys set to -inf.
        q, k, v = attn.q(x), attn.k(x), attn.v(x)
        q, k, v = (t.view(2, 6, 4, 4).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(4)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(2, 6, 16)
        ref = attn.out(y)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_values():
    with pytest.raises(ConfigError, match="n_heads=3"):
        EncoderConfig(vocab_size=10, n_classes=2, d_model=16, n_heads=3)
    with pytest.raises(ConfigError, match="n_classes=1"):
        EncoderConfig(vocab_size=10, n_classes=1)


def test_dropout_is_active_only_in_training(tiny_model: EncoderClassifier):
    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    tiny_model.train()
    torch.manual_seed(1)
    a = tiny_model(ids, mask)
    b = tiny_model(ids, mask)
    assert not torch.equal(a, b)
    tiny_model.eval()
    with torch.no_grad():
        assert torch.equal(tiny_model(ids, mask), tiny_model(ids, mask))
