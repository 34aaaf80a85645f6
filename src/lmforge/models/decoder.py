"""A Llama-style decoder-only language model, in one readable file.

    token ids -> Embedding -> [Block] x n_layers -> RMSNorm -> Linear -> logits [B, T, vocab]

    Block:  x -> RMSNorm -> Attention (RoPE on q/k, causal, grouped-query) -> + x
              -> RMSNorm -> SwiGLU feed-forward  w2(silu(w1 x) * w3 x)     -> + x

No biases and no dropout, as in Llama. Rotary tables live once on the model as non-persistent
buffers and are passed to every block, so a pruned pipeline stage still has them and a
checkpoint never stores them.

The model follows `lmforge.parallel.protocol.ParallelModel`: the blocks sit in a ModuleDict
keyed "0".."N-1" (`layers_attr`), `tensor_parallel_plan` returns the Megatron-style sharding
(with or without sequence parallelism) and `pipeline_stage` prunes it in place to one stage.
Attention reads its local head count from the projection widths at run time, so the same code
runs unsharded and with column-sharded wq/wk/wv.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError


def llama_ffn_dim(d_model: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
    """Llama's SwiGLU hidden width: 2/3 of 4*d_model (same FLOPs as a 4x GELU MLP, which has
    two matrices instead of three), times an optional multiplier, rounded up to `multiple_of`
    so the matmuls (and their tensor-parallel shards) stay aligned."""
    hidden = int(2 * (4 * d_model) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass
class DecoderConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads (plain MHA)
    d_ff: int | None = None  # SwiGLU hidden width; None derives it with llama_ffn_dim
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    multiple_of: int = 256  # only used to derive d_ff when it is None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r}: use a positive integer")
        if self.d_ff is None:
            self.d_ff = llama_ffn_dim(self.d_model, self.multiple_of)
        for name in ("d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r}: use a positive integer")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: use a positive number")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                "change one of them"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(each kv head serves a whole group of query heads); pick a divisor"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head_dim=d_model/n_heads={self.head_dim} is odd; rotary embeddings rotate "
                "pairs of channels, so choose d_model and n_heads giving an even head_dim"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown decoder config keys {unknown}; valid keys are {sorted(known)}"
            )
        missing = sorted(
            f for f in ("vocab_size", "d_model", "n_layers", "n_heads") if f not in data
        )
        if missing:
            raise ConfigError(f"decoder config is missing {missing}")
        return cls(**data)


# Shapes only: the tokenizer decides vocab_size, so `decoder_config` takes it separately.
# Parameter counts below are at vocab_size=32000 with untied embeddings.
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    # ~0.23M params at vocab 1000: unit tests and smoke runs.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192, max_seq_len=128),
    # 25.2M non-embedding params (+32.8M embeddings at vocab 32000).
    "small": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1536, max_seq_len=1024),
    # ~125M at vocab 32000 (GPT-2-small scale).
    "base": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048, max_seq_len=2048),
    # ~1.1B at vocab 32000: the TinyLlama-1.1B shape.
    "1b": dict(d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632, max_seq_len=2048),
}


def decoder_config(preset: str, vocab_size: int, **overrides: Any) -> DecoderConfig:
    """A preset's shape with the caller's vocab size; `overrides` replace single fields."""
    if preset not in DECODER_PRESETS:
        raise ConfigError(
            f"unknown decoder preset {preset!r}; choose one of {list(DECODER_PRESETS)}"
        )
    return DecoderConfig.from_dict(
        {**DECODER_PRESETS[preset], "vocab_size": vocab_size, **overrides}
    )


def decoder_param_count(cfg: DecoderConfig) -> int:
    """Parameters of `DecoderLM(cfg)`, by arithmetic (nothing is allocated)."""
    d, kv_width = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    attention = 2 * d * d + 2 * d * kv_width  # wq, wo; wk, wv
    feed_forward = 3 * d * cfg.d_ff  # w1, w3, w2
    block = attention + feed_forward + 2 * d  # + the two RMSNorm weights
    embeddings = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return embeddings + cfg.n_layers * block + d  # + the final norm


def flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, the usual estimate for MFU."""
    # 6 * N: each weight does one multiply-add (2 FLOPs) per token forward and two backward
    #   (grad of input and grad of weight). N leaves out the input embedding table, which is a
    #   lookup rather than a matmul, unless it is tied to the output projection.
    # 12 * n_layers * d_model * seq_len: attention's two weight-free matmuls, QK^T and PV,
    #   each 2 * d_model * seq_len FLOPs per token forward, times 3 for forward + backward.
    #   Causal masking would halve it; like the PaLM paper's MFU we count the full square.
    n = decoder_param_count(cfg)
    if not cfg.tie_embeddings:
        n -= cfg.vocab_size * cfg.d_model
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * seq_len


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 for the mean of squares: bf16 sums lose the small channels.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each [max_seq_len, head_dim/2], in fp32."""
    inv_freq = theta ** -(
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, T, H, head_dim] by position t's angles.

    Real arithmetic on the Meta-Llama pairing (the complex-number form without complex
    tensors, which DTensor and torch.compile handle poorly); cos/sin are [T, head_dim/2].
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each [B, T, H, head_dim/2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> torch.Tensor:
        B, T, _ = x.shape  # x is replicated here, also under tensor parallel: T is the full length
        if rope_cos.shape[0] < T:
            raise ValueError(
                f"sequence length {T} exceeds max_seq_len={rope_cos.shape[0]}; truncate it"
            )
        # Head counts come from the output widths, not the config: under tensor parallel each
        # rank holds a column shard of wq/wk/wv and so a slice of the heads.
        q = self.wq(x).view(B, T, -1, self.head_dim)  # [B, T, local heads, hd]
        k = self.wk(x).view(B, T, -1, self.head_dim)  # [B, T, local kv heads, hd]
        v = self.wv(x).view(B, T, -1, self.head_dim)
        q = apply_rope(q, rope_cos[:T], rope_sin[:T])
        k = apply_rope(k, rope_cos[:T], rope_sin[:T])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, hd]
        # Grouped-query: query head i reads kv head i // n_rep. A contiguous shard of query heads
        # maps to the matching contiguous shard of kv heads, so this holds per rank too.
        n_rep = q.shape[1] // k.shape[1]
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, heads, T, hd]
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is the gate, w3 the up projection, w2 the down."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope_cos, rope_sin)
        return h + self.feed_forward(self.ffn_norm(h))


class DecoderLM(nn.Module):
    """`forward(token ids [B, T]) -> logits [B, T, vocab]`.

    A pipeline stage without `tok_embeddings` takes the previous stage's hidden states
    [B, T, d_model] instead; one without `output` returns hidden states.
    """

    layers_attr: ClassVar[str] = "layers"

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm: RMSNorm | None = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output: nn.Linear | None = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Derived from the config, so not saved: checkpoints hold weights only.
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        """(Re)initialise every weight and the rotary tables; after `to_empty()` from meta too.

        Normal(0, init_std) everywhere except the projections that write into the residual
        stream (wo, w2), which get init_std / sqrt(2 * n_layers) so the residual's variance
        does not grow with depth (GPT-2's scheme). Norm weights start at 1.
        """
        cfg = self.config
        self._build_rope()
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.rsplit(".", 1)[-1] in ("wo", "w2")
                nn.init.normal_(
                    module.weight, std=residual_std if is_residual_out else cfg.init_std
                )
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    def _build_rope(self) -> None:
        device = self.rope_cos.device
        if device.type != "meta":
            cfg = self.config
            self.rope_cos, self.rope_sin = rope_tables(
                cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device
            )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> DecoderLM:
        # Every .to()/.half()/.cuda()/.to_empty() goes through here. Rebuild the rotary tables
        # afterwards: bf16 would round the angles' cos/sin badly at long positions, and
        # to_empty() (meta-device init) would leave them uninitialised.
        super()._apply(fn, recurse)
        self._build_rope()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(x) if self.tok_embeddings is not None else x
        for layer in self.layers.values():  # insertion order is key order "0".."N-1"
            h = layer(h, self.rope_cos, self.rope_sin)
        if self.output is None:
            return h
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h)

    # --- parallelism (lmforge.parallel.protocol.ParallelModel) --------------------------------

    def tp_divisors(self) -> dict[str, int]:
        """Sizes the tensor-parallel degree must divide (checked by the generic parallel code)."""
        cfg = self.config
        return {"n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff}

    def tensor_parallel_plan(self, sequence_parallel: bool = True) -> dict[str, Any]:
        """Megatron-style plan for `parallelize_module` on a 1-D tp mesh.

        wq/wk/wv and w1/w3 are column-sharded (each rank owns whole heads / a slice of d_ff),
        wo and w2 row-sharded, so each block needs one reduction after attention and one after
        the feed-forward. With `sequence_parallel` the activations between them (norms,
        residuals) are sharded along the sequence and that reduction becomes a reduce-scatter
        plus an all-gather before the next matmul. Logits come back replicated.
        """
        # Imported here so the model imports on builds without torch.distributed.
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            PrepareModuleInput,
            RowwiseParallel,
            SequenceParallel,
        )

        if self.config.tie_embeddings:
            raise ConfigError(
                "tie_embeddings=True is not supported with tensor parallel: sharding gives "
                "tok_embeddings and output separate weights; set tie_embeddings=False"
            )
        plan: dict[str, Any] = {}
        if sequence_parallel:
            if self.tok_embeddings is not None:
                plan["tok_embeddings"] = RowwiseParallel(
                    input_layouts=Replicate(), output_layouts=Shard(1)
                )
            if self.norm is not None:
                plan["norm"] = SequenceParallel()
            if self.output is not None:
                plan["output"] = ColwiseParallel(
                    input_layouts=Shard(1), output_layouts=Replicate(), use_local_output=True
                )
            block: dict[str, Any] = {
                "attention_norm": SequenceParallel(),
                # Args are (x, rope_cos, rope_sin): gather x's sequence shards, leave rope alone.
                "attention": PrepareModuleInput(
                    input_layouts=(Shard(1), None, None),
                    desired_input_layouts=(Replicate(), None, None),
                ),
                "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
                ),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            }
        else:
            if self.tok_embeddings is not None:
                plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate())
            if self.output is not None:
                plan["output"] = ColwiseParallel(output_layouts=Replicate(), use_local_output=True)
            block = {"attention.wo": RowwiseParallel(), "feed_forward.w2": RowwiseParallel()}
        for name in (
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "feed_forward.w1",
            "feed_forward.w3",
        ):
            block[name] = ColwiseParallel()
        if len(self.layers):  # a wildcard that matches nothing only warns, but say nothing
            for name, style in block.items():
                plan[f"{self.layers_attr}.*.{name}"] = style
        return plan

    def pipeline_stage(self, layer_keys: list[str], first: bool, last: bool) -> DecoderLM:
        """Prune in place to one pipeline stage holding `layer_keys`; returns self."""
        if self.config.tie_embeddings and not (first and last):
            raise ConfigError(
                "tie_embeddings=True cannot be split across pipeline stages: the first stage's "
                "tok_embeddings and the last stage's output share one weight; set "
                "tie_embeddings=False or use a single pipeline stage"
            )
        missing = [k for k in layer_keys if k not in self.layers]
        if missing:
            raise ConfigError(
                f"pipeline stage asks for layers {missing} that this model does not have "
                f"(it has {list(self.layers)})"
            )
        keep = set(layer_keys)
        for key in list(self.layers):
            if key not in keep:
                del self.layers[key]
        if not first:
            self.tok_embeddings = None
        if not last:
            self.norm = None
            self.output = None
        return self
