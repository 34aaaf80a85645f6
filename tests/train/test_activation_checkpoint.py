"""Activation checkpointing policies: same numbers, same parameter names, less saved memory."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lmforge.errors import ConfigError
from lmforge.train.activation_checkpoint import (
    POLICIES,
    apply_activation_checkpointing,
    sqrt_segments,
    unwrap_block,
)

D, HEADS, VOCAB, T = 32, 4, 50, 12


class Block(nn.Module):
    """Pre-norm attention + MLP; takes extra positional and keyword args like a real decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D)
        self.up = nn.Linear(D, 2 * D)
        self.down = nn.Linear(2 * D, D)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(self.norm1(x) * scale).split(D, dim=2)
        q, k, v = (t.view(B, L, HEADS, D // HEADS).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(y.transpose(1, 2).reshape(B, L, D))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    layers_attr = "layers"

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleDict({str(i): Block() for i in range(n_layers)})
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        scale = torch.linspace(0.5, 1.5, D)
        mask = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
        for block in self.layers.values():
            x = block(x, scale, mask=mask)
        return self.head(self.norm(x))


def _model(n_layers: int = 5) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(n_layers)


def _ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(1))


def _loss(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    return logits, loss


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    # Parameter names carry the wrapper prefix; strip it to compare against the plain model.
    return {
        name.replace("_checkpoint_wrapped_module.", ""): p.grad
        for name, p in model.named_parameters()
    }


@pytest.mark.parametrize("policy", POLICIES)
def test_outputs_and_gradients_match_the_plain_model(policy: str) -> None:
    plain, wrapped = _model(), _model()
    apply_activation_checkpointing(wrapped, policy)
    ids = _ids()
    ref_logits, ref_loss = _loss(plain, ids)
    ref_loss.backward()
    logits, loss = _loss(wrapped, ids)
    loss.backward()
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=0)
    ref_grads, grads = _grads(plain), _grads(wrapped)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("policy", POLICIES)
def test_state_dict_keys_do_not_change(policy: str) -> None:
    wrapped = _model()
    apply_activation_checkpointing(wrapped, policy)
    assert list(wrapped.state_dict()) == list(_model().state_dict())


def test_state_dict_loads_across_policies() -> None:
    ids = _ids()
    for source in POLICIES:
        trained = _model()
        with torch.no_grad():  # make the weights differ from a fresh model's
            for p in trained.parameters():
                p.add_(0.01 * torch.randn_like(p))
        apply_activation_checkpointing(trained, source)
        state = trained.state_dict()
        expected = trained(ids)
        for target in POLICIES:
            model = _model()
            apply_activation_checkpointing(model, target)
            model.load_state_dict(state, strict=True)
            torch.testing.assert_close(model(ids), expected, atol=1e-6, rtol=0)


def test_sqrt_segment_counts() -> None:
    keys9 = [str(i) for i in range(9)]
    assert sqrt_segments(keys9) == [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"]]
    assert [len(s) for s in sqrt_segments([str(i) for i in range(10)])] == [3, 3, 2, 2]
    assert apply_activation_checkpointing(_model(9), "sqrt") == ["0", "3", "6"]
    assert apply_activation_checkpointing(_model(10), "sqrt") == ["0", "3", "6", "8"]


def test_every_k_wraps_every_kth_block() -> None:
    assert apply_activation_checkpointing(_model(6), "every_k", every_k=2) == ["1", "3", "5"]
    assert apply_activation_checkpointing(_model(7), "every_k", every_k=3) == ["2", "5"]
    assert apply_activation_checkpointing(_model(3), "every_k", every_k=1) == ["0", "1", "2"]
    model = _model(6)
    apply_activation_checkpointing(model, "every_k", every_k=3)
    wrapped = [k for k, block in model.layers.items() if block is not unwrap_block(block)]
    assert wrapped == ["2", "5"]


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_every_k_rejects_bad_k(k: object) -> None:
    with pytest.raises(ConfigError, match="every_k"):
        apply_activation_checkpointing(_model(), "every_k", every_k=k)  # type: ignore[arg-type]


def test_unknown_policy_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="none, full, every_k, sqrt, selective"):
        apply_activation_checkpointing(_model(), "everything")


def test_applying_twice_is_refused() -> None:
    model = _model()
    apply_activation_checkpointing(model, "full")
    with pytest.raises(RuntimeError, match="already"):
        apply_activation_checkpointing(model, "sqrt")


def _saved_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes packed for backward during one forward, each storage counted once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _loss(model, ids)
    return sum(storages.values())


def test_checkpointing_saves_less_for_backward() -> None:
    ids = _ids(batch=4)
    saved = {}
    for policy in ("none", "full", "sqrt"):
        model = _model(16)
        apply_activation_checkpointing(model, policy)
        saved[policy] = _saved_bytes(model, ids)
    # sqrt keeps 4 segment inputs where full keeps 16 block inputs.
    assert saved["sqrt"] < saved["full"] < saved["none"] / 4


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages ops create while active, until freed (sees the SAC cache too)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(a.untyped_storage()) for a in tree_leaves((args, kwargs)) if torch.is_tensor(a)
        }
        for t in tree_leaves(out):
            if torch.is_tensor(t):
                storage = t.untyped_storage()
                key = id(storage)  # the storage's Python object lives as long as its memory
                if key not in inputs and key not in self.live:
                    self.live[key] = storage.nbytes()
                    weakref.finalize(storage, self.live.pop, key)
        return out


def test_selective_keeps_matmul_outputs_only() -> None:
    ids = _ids(batch=4)
    held = {}
    for policy in ("none", "full", "selective"):
        model = _model(8)
        apply_activation_checkpointing(model, policy)
        with _LiveBytes() as tracker:
            _, loss = _loss(model, ids)  # keep the graph alive while counting
            held[policy] = sum(tracker.live.values())
            del loss
    # Selective checkpointing's cached matmul outputs bypass saved_tensors_hooks, so this
    # counts live memory after the forward instead.
    assert held["full"] < held["selective"] < held["none"]


def test_sqrt_model_deep_copies_with_its_own_segments() -> None:
    model = _model(9)
    apply_activation_checkpointing(model, "sqrt")
    clone = copy.deepcopy(model)
    assert all(t in list(clone.layers.values()) for t in clone.layers["0"]._tails)
    torch.testing.assert_close(clone(_ids()), model(_ids()), atol=0, rtol=0)


@pytest.mark.parametrize("policy", ["sqrt", "selective"])
def test_decoder_lm_matches_plain(policy: str) -> None:
    decoder = pytest.importorskip("lmforge.models.decoder")
    cfg = decoder.decoder_config("tiny", VOCAB, n_layers=5, max_seq_len=T)
    torch.manual_seed(0)
    plain = decoder.DecoderLM(cfg)
    wrapped = copy.deepcopy(plain)
    apply_activation_checkpointing(wrapped, policy)
    ids = _ids()
    for model in (plain, wrapped):
        model(ids).square().mean().backward()
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    for (name, p), (_, q) in zip(plain.named_parameters(), wrapped.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=0, msg=name)
