"""A small BERT-style transformer encoder with a classification head, in one readable file.

    tokens + positions -> [Block: LN -> self-attention -> + ; LN -> GELU MLP -> +] x n_layers
    -> LayerNorm -> masked mean over real tokens -> Linear -> logits

Pre-LN blocks train stably without warmup tricks at this size. Every projection is an
`nn.Linear`, so int8 dynamic quantisation (which swaps `nn.Linear`) covers the whole model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError


@dataclass
class EncoderConfig:
    vocab_size: int
    n_classes: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_len: int = 128
    dropout: float = 0.1  # on embeddings, residual branches and the head
    pad_id: int = 0
    # Dropout on attention probabilities draws a [B, nh, T, T] mask per layer: ~20% of a CPU
    # training step at the default size, for little gain here. Off unless asked for; it does
    # not change inference, so the model directory does not record it.
    attn_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                "change one of them"
            )
        if self.n_classes < 2:
            raise ConfigError(f"n_classes={self.n_classes}: a classifier needs at least 2 labels")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)}: use a rate in [0, 1)")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"pad_id={self.pad_id} is outside vocab_size={self.vocab_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        # key_mask (B, 1, 1, T): True where a key is a real token; padded keys get no weight.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.out(y))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), key_mask)
        return x + self.mlp(self.ln_mlp(x))


class EncoderClassifier(nn.Module):
    """`forward(input_ids [B, T], attention_mask [B, T]) -> logits [B, n_classes]`."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_len={self.config.max_len}; truncate it"
            )
        mask = attention_mask.bool()  # (B, T)
        pos = torch.arange(seq_len, device=input_ids.device)
        x = self.emb_dropout(self.tok_emb(input_ids) + self.pos_emb(pos))  # (B, T, C)
        # A row with no real token would softmax over nothing (NaN); let it attend everywhere.
        attend = mask | ~mask.any(dim=1, keepdim=True)
        key_mask = attend[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.ln_final(x)
        # Mean over real tokens only; clamp guards an all-padding row against 0/0.
        weights = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)
        return self.head(self.head_dropout(pooled))  # (B, n_classes)
