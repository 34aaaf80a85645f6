"""A small BERT-style transformer encoder with a classification head, in one readable file.

    tokens + positions (+ token type 0) [-> LayerNorm]
    -> Block x n_layers
         pre-norm  (default): x + attn(LN(x)); x + mlp(LN(x))
         post-norm (BERT):    LN(x + attn(x)); LN(x + mlp(x))
    -> [LayerNorm, pre-norm only] -> masked mean over real tokens (or [CLS]) -> Linear -> logits

Pre-LN blocks train stably without warmup tricks at this size; post-norm plus the embedding
LayerNorm is the original BERT layout, so pretrained BERT checkpoints load exactly (see
`lmforge.models.hf_bert`). Every projection is an `nn.Linear`, so int8 dynamic quantisation
(which swaps `nn.Linear`) covers the whole model. Query, key and value are separate
projections, so tensor parallelism can shard each by columns (`tensor_parallel_plan`).

The model implements `lmforge.parallel.protocol.ParallelModel`: the blocks live in a
`ModuleDict` keyed "0".."N-1", and `pipeline_stage` prunes the model in place to one stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError

NORM_POSITIONS = ("pre", "post")
POOLINGS = ("mean", "cls")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


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
    # The defaults below are the original lmforge encoder; BERT is post, True, 2, 1e-12.
    norm_position: str = "pre"  # "pre": x + f(LN(x)); "post": LN(x + f(x))
    embed_norm: bool = False  # LayerNorm over the summed embeddings
    type_vocab_size: int = 0  # > 0 adds token-type embedding 0 to every position
    norm_eps: float = 1e-5
    pooling: str = "mean"  # "mean" over real tokens, or "cls" (the first token)
    activation: str = "gelu"  # "gelu" (erf), "gelu_tanh" (tanh approximation), "relu"

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
        for name, allowed in (
            ("norm_position", NORM_POSITIONS),
            ("pooling", POOLINGS),
            ("activation", ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: use one of {list(allowed)}")
        if not isinstance(self.embed_norm, bool):
            raise ConfigError(f"embed_norm={self.embed_norm!r}: use true or false")
        if self.type_vocab_size < 0:
            raise ConfigError(
                f"type_vocab_size={self.type_vocab_size}: use 0 (no token types) or more"
            )
        if not 0.0 < self.norm_eps < 1.0:
            raise ConfigError(f"norm_eps={self.norm_eps}: use a small positive value like 1e-5")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Shapes only: the tokenizer and the labels decide vocab_size and n_classes.
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # 0.27M non-embedding params: the original lmforge default, trains on a CPU in minutes.
    "tiny": dict(d_model=128, n_layers=2, n_heads=4, d_ff=256, max_len=128),
    # 10.6M non-embedding params: the all-MiniLM-L6 shape.
    "small": dict(d_model=384, n_layers=6, n_heads=12, d_ff=1536, max_len=512),
    # 85M non-embedding params: the BERT-base shape.
    "base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_len=512),
    # 302M non-embedding params: the BERT-large shape.
    "large": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096, max_len=512),
    # 1.2B non-embedding params: BERT-large's depth at twice its width.
    "1b": dict(d_model=2048, n_layers=24, n_heads=16, d_ff=8192, max_len=512),
}


def encoder_config(preset: str, vocab_size: int, n_classes: int, **overrides: Any) -> EncoderConfig:
    """A preset's shape with the caller's vocab and label count; `overrides` replace fields."""
    if preset not in ENCODER_PRESETS:
        raise ConfigError(
            f"unknown encoder preset {preset!r}; choose one of {list(ENCODER_PRESETS)}"
        )
    known = {f.name for f in fields(EncoderConfig)} - {"vocab_size", "n_classes"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown encoder config keys {unknown}; valid keys are {sorted(known)}")
    return EncoderConfig(
        vocab_size=vocab_size, n_classes=n_classes, **{**ENCODER_PRESETS[preset], **overrides}
    )


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.head_dim = cfg.d_model // cfg.n_heads
        # Separate projections (not one fused qkv) so tensor parallelism can split each one by
        # output columns, i.e. by heads. Initialised in this order they draw the very values
        # the fused [3C, C] matrix drew (when C * C is a multiple of 16), so a seed still
        # gives the old model.
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads: under tensor parallelism q/k/v hold only this rank's heads.
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        # key_mask (B, 1, 1, T): True where a key is a real token; padded keys get no weight.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_dropout(self.out(y))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation = cfg.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.relu(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        # Same module names in both layouts: ln_attn/ln_mlp normalise the input of their
        # sublayer (pre) or the residual sum after it (post).
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_attn(x), key_mask)
            return x + self.mlp(self.ln_mlp(x))
        x = self.ln_attn(x + self.attn(x, key_mask))
        return self.ln_mlp(x + self.mlp(x))


class EncoderClassifier(nn.Module):
    """`forward(input_ids [B, T], attention_mask [B, T]) -> logits [B, n_classes]`.

    A pipeline stage (see `pipeline_stage`) keeps the same `forward(a, b)`: `a` is token ids
    when the stage holds the embeddings and hidden states [B, T, C] otherwise, `b` is the
    [B, T] attention mask (ints, bools or floats). A stage without the head returns
    `(hidden, attention_mask as float)`, which is exactly what the next stage takes.
    """

    layers_attr: ClassVar[str] = "blocks"

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        # Absent optional modules are registered as None: they hold no parameters, so state
        # dict names stay those of the original model, and a pruned stage sets them to None too.
        self.tok_emb: nn.Embedding | None = nn.Embedding(
            cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id
        )
        self.pos_emb: nn.Embedding | None = nn.Embedding(cfg.max_len, cfg.d_model)
        self.type_emb: nn.Embedding | None = (
            nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        )
        self.emb_norm: nn.LayerNorm | None = (
            nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.embed_norm else None
        )
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        # Post-norm blocks already end in a LayerNorm; BERT has no final one.
        self.ln_final: nn.LayerNorm | None = (
            nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.norm_position == "pre" else None
        )
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.head: nn.Linear | None = nn.Linear(cfg.d_model, cfg.n_classes)
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

    # --- the three parts of forward; a pipeline stage runs the ones it still holds ----------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> input hidden states [B, T, C] (first stage only)."""
        if self.tok_emb is None or self.pos_emb is None:
            raise RuntimeError("this pipeline stage holds no embeddings; pass hidden states")
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_len={self.config.max_len}; truncate it"
            )
        pos = torch.arange(seq_len, device=input_ids.device)
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.type_emb is not None:  # every token is segment 0; BERT's order of the sums
            x = x + self.type_emb.weight[0]
        x = x + self.pos_emb(pos)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.emb_dropout(x)

    def run_blocks(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states through the blocks this module holds, in key order."""
        mask = attention_mask.bool()  # (B, T)
        # A row with no real token would softmax over nothing (NaN); let it attend everywhere.
        attend = mask | ~mask.any(dim=1, keepdim=True)
        key_mask = attend[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        for block in self.blocks.values():
            x = block(x, key_mask)
        return x

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, T, C] -> one vector per row [B, C]."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        # Mean over real tokens only; clamp guards an all-padding row against 0/0.
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, T, C] of the whole model (BERT's `last_hidden_state`)."""
        x = self.run_blocks(self.embed(input_ids), attention_mask)
        return self.ln_final(x) if self.ln_final is not None else x

    def forward(
        self, inputs: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(inputs) if self.tok_emb is not None else inputs
        x = self.run_blocks(x, attention_mask)
        if self.head is None:  # not the last pipeline stage
            return x, attention_mask.float()
        if self.ln_final is not None:
            x = self.ln_final(x)
        pooled = self.pool(x, attention_mask)
        return self.head(self.head_dropout(pooled))  # (B, n_classes)

    # --- lmforge.parallel.protocol.ParallelModel --------------------------------------------

    def tp_divisors(self) -> dict[str, int]:
        """Sizes the tensor-parallel degree must divide: heads and MLP width are sharded."""
        return {"n_heads": self.config.n_heads, "d_ff": self.config.d_ff}

    def tensor_parallel_plan(self, sequence_parallel: bool = True) -> dict[str, Any]:
        """Megatron-style plan: q/k/v and mlp.up split by columns, out and mlp.down by rows.

        Each block then needs one all-reduce after attention and one after the MLP; the
        activations between blocks, the norms, embeddings and head stay replicated.

        `sequence_parallel` is accepted for the protocol but does not apply here: sharding the
        activations between blocks along the sequence would split the masked mean pooling and
        the [B, T] attention mask across ranks, so this encoder always runs plain tensor
        parallelism. Ranks of one tensor-parallel group must share the random seed, so that
        their (replicated) dropout masks agree.
        """
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        del sequence_parallel  # see the docstring
        return {
            "blocks.*.attn.q": ColwiseParallel(),
            "blocks.*.attn.k": ColwiseParallel(),
            "blocks.*.attn.v": ColwiseParallel(),
            "blocks.*.attn.out": RowwiseParallel(),
            "blocks.*.mlp.up": ColwiseParallel(),
            "blocks.*.mlp.down": RowwiseParallel(),
        }

    def pipeline_stage(
        self, layer_keys: Sequence[str], first: bool, last: bool
    ) -> EncoderClassifier:
        """Prune this model in place to one pipeline stage and return it.

        Keeps the blocks named in `layer_keys` (under their original keys, so parameter names
        match the full model's), the embeddings only if `first`, and the final norm and head
        only if `last`. See the class docstring for what each stage takes and returns.
        """
        keep = [str(k) for k in layer_keys]
        unknown = [k for k in keep if k not in self.blocks]
        if unknown:
            raise ValueError(
                f"layer_keys {unknown} are not blocks of this model; "
                f"use keys from {list(self.blocks.keys())}"
            )
        for key in [k for k in self.blocks if k not in keep]:
            del self.blocks[key]
        if not first:
            self.tok_emb = self.pos_emb = self.type_emb = self.emb_norm = None
        if not last:
            self.ln_final = self.head = None
        return self
