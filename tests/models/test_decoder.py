import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import DECODER_PRESETS, DecoderConfig, DecoderLM, decoder_config
from lmforge.models.decoder import (
    apply_rope,
    decoder_param_count,
    flops_per_token,
    llama_ffn_dim,
    rope_tables,
)
from lmforge.parallel.protocol import ParallelModel, model_layers

VOCAB = 96


def tiny(**overrides) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(decoder_config("tiny", VOCAB, **overrides)).eval()


def random_ids(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --- shapes, causality, attention ---------------------------------------------------------------


def test_logits_shape_and_protocol():
    model = tiny()
    assert isinstance(model, ParallelModel)
    assert list(model_layers(model)) == ["0", "1"]
    with torch.no_grad():
        assert model(random_ids(3, 10)).shape == (3, 10, VOCAB)


def test_changing_a_token_leaves_earlier_logits_unchanged():
    model = tiny()
    ids = random_ids(1, 16)
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_too_long_sequence_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    gqa = tiny()  # 4 query heads share 2 kv heads
    mha = tiny(n_kv_heads=4)
    shared = {
        k: v for k, v in gqa.state_dict().items() if not k.endswith(("wk.weight", "wv.weight"))
    }
    mha.load_state_dict(shared, strict=False)
    hd = gqa.config.head_dim
    with torch.no_grad():
        for key, block in gqa.layers.items():
            for name in ("wk", "wv"):
                w = getattr(block.attention, name).weight.view(2, hd, -1)  # [kv heads, hd, d]
                repeated = w.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
                getattr(mha.layers[key].attention, name).weight.copy_(repeated)
        ids = random_ids()
        torch.testing.assert_close(gqa(ids), mha(ids), atol=1e-6, rtol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(head_dim=8, max_seq_len=32, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pos_q: int, pos_k: int) -> torch.Tensor:
        rq = apply_rope(q, cos[pos_q : pos_q + 1], sin[pos_q : pos_q + 1])
        rk = apply_rope(k, cos[pos_k : pos_k + 1], sin[pos_k : pos_k + 1])
        return (rq * rk).sum()

    torch.testing.assert_close(score(5, 2), score(20, 17))
    torch.testing.assert_close(apply_rope(q, cos[:1], sin[:1]), q)  # position 0: no rotation
    assert not torch.allclose(score(5, 2), score(5, 4))


# --- config, presets, counts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (dict(d_model=66), "d_model=66"),
        (dict(n_kv_heads=3), "n_kv_heads=3"),
        (dict(n_layers=0), "n_layers=0"),
        (dict(d_ff=-1), "d_ff=-1"),
        (dict(d_model=72, n_heads=8), "head_dim"),  # head_dim 9 is odd: rope needs pairs
        (dict(norm_eps=0.0), "norm_eps=0.0"),
    ],
)
def test_bad_config_names_the_value(fields, named):
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)
    with pytest.raises(ConfigError, match=named):
        DecoderConfig(**{**base, **fields})


def test_unknown_preset_and_unknown_override_are_config_errors():
    with pytest.raises(ConfigError, match=r"tiny.*small.*base.*1b"):
        decoder_config("huge", VOCAB)
    with pytest.raises(ConfigError, match="n_head"):
        decoder_config("tiny", VOCAB, n_head=8)


def test_config_round_trips_and_derives_d_ff():
    cfg = DecoderConfig(vocab_size=VOCAB, d_model=4096, n_layers=1, n_heads=32)
    assert cfg.d_ff == llama_ffn_dim(4096) == 11008  # Llama-7B's width
    assert cfg.n_kv_heads == 32
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    assert all("vocab_size" not in shape for shape in DECODER_PRESETS.values())


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("tied", [False, True])
def test_arithmetic_param_count_matches_the_module(preset, tied):
    cfg = decoder_config(preset, 1000, tie_embeddings=tied)
    assert decoder_param_count(cfg) == DecoderLM(cfg).num_parameters()


def test_presets_cover_tiny_to_1b():
    counts = {name: decoder_param_count(decoder_config(name, 32000)) for name in DECODER_PRESETS}
    assert list(counts) == ["tiny", "small", "base", "1b"]
    assert counts["tiny"] < counts["small"] < counts["base"] < counts["1b"]
    assert 1.0e9 < counts["1b"] < 1.5e9
    assert 100e6 < counts["base"] < 150e6
    assert decoder_param_count(decoder_config("tiny", 1000)) < 1e6


def test_flops_per_token_is_six_n_plus_attention():
    cfg = decoder_config("1b", 32000)
    n_matmul = decoder_param_count(cfg) - 32000 * cfg.d_model  # the input lookup is no matmul
    attention = 12 * cfg.n_layers * cfg.d_model * 2048
    assert flops_per_token(cfg, 2048) == pytest.approx(6 * n_matmul + attention)
    tied = decoder_config("1b", 32000, tie_embeddings=True)
    assert flops_per_token(tied, 2048) == pytest.approx(6 * decoder_param_count(tied) + attention)


# --- init, dtype, meta device ------------------------------------------------------------------


def test_init_is_seeded_and_scales_residual_projections():
    a, b = tiny(), tiny()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    block = a.layers["0"]
    std = a.config.init_std
    assert block.attention.wq.weight.std().item() == pytest.approx(std, rel=0.1)
    for w in (block.attention.wo.weight, block.feed_forward.w2.weight):
        assert w.std().item() == pytest.approx(std / math.sqrt(2 * 2), rel=0.1)
    assert torch.equal(block.ffn_norm.weight, torch.ones(64))


def test_tied_embeddings_share_one_weight():
    model = tiny(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight


def test_rope_tables_are_not_saved_and_stay_fp32_under_bf16():
    model = tiny()
    assert not any(k.startswith("rope") for k in model.state_dict())
    ids = random_ids()
    with torch.no_grad():
        ref = model(ids)
        model.to(torch.bfloat16)
        assert model.rope_cos.dtype == torch.float32
        assert model.output.weight.dtype == torch.bfloat16
        torch.testing.assert_close(model(ids).float(), ref, atol=0.05, rtol=0.05)


def test_meta_device_init_then_to_empty():
    cfg = decoder_config("tiny", VOCAB)
    with torch.device("meta"):
        model = DecoderLM(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert torch.equal(model.rope_sin, tiny().rope_sin)
    with torch.no_grad():
        assert torch.isfinite(model(random_ids())).all()


# --- pipeline stages ---------------------------------------------------------------------------


def test_two_pipeline_stages_chain_to_the_full_model():
    full = tiny()
    stage0 = copy.deepcopy(full).pipeline_stage(["0"], first=True, last=False)
    stage1 = copy.deepcopy(full).pipeline_stage(["1"], first=False, last=True)
    assert stage0.output is None and stage0.norm is None and stage1.tok_embeddings is None
    ids = random_ids()
    with torch.no_grad():
        hidden = stage0(ids)
        assert hidden.shape == (2, 12, 64)
        torch.testing.assert_close(stage1(hidden), full(ids), atol=1e-6, rtol=1e-6)
    full_names = set(full.state_dict())
    names0, names1 = set(stage0.state_dict()), set(stage1.state_dict())
    assert names0 <= full_names and names1 <= full_names
    assert names0 | names1 == full_names and not names0 & names1
    assert "layers.1.attention.wq.weight" in names1  # keys keep their global layer index


def test_tied_embeddings_cannot_be_split_across_stages():
    with pytest.raises(ConfigError, match=r"tied|tie_embeddings"):
        tiny(tie_embeddings=True).pipeline_stage(["0"], first=True, last=False)
    tiny(tie_embeddings=True).pipeline_stage(["0", "1"], first=True, last=True)  # one stage: ok
    with pytest.raises(ConfigError, match="'7'"):
        tiny().pipeline_stage(["7"], first=True, last=True)


# --- tensor parallel ---------------------------------------------------------------------------


def test_tp_plan_only_names_modules_that_exist():
    middle = tiny().pipeline_stage(["1"], first=False, last=False)
    for sp in (True, False):
        keys = set(middle.tensor_parallel_plan(sequence_parallel=sp))
        assert not keys & {"tok_embeddings", "norm", "output"}
        assert "layers.*.attention.wq" in keys
    assert "norm" in tiny().tensor_parallel_plan(sequence_parallel=True)
    assert tiny().tp_divisors() == {"n_heads": 4, "n_kv_heads": 2, "d_ff": 192}
    with pytest.raises(ConfigError, match="tie_embeddings"):
        tiny(tie_embeddings=True).tensor_parallel_plan()


def _tp_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        mesh = init_device_mesh("cpu", (world,))
        ids = random_ids(2, 8)
        targets = random_ids(2, 8, seed=2)
        ref = tiny()
        ref_logits = ref(ids)
        F.cross_entropy(ref_logits.flatten(0, 1), targets.flatten()).backward()
        ref_grads = {n: p.grad for n, p in ref.named_parameters()}
        for sp in (True, False):
            model = tiny()
            parallelize_module(model, mesh, model.tensor_parallel_plan(sequence_parallel=sp))
            wq = model.layers["0"].attention.wq.weight
            assert isinstance(wq, DTensor) and wq.to_local().shape[0] == wq.shape[0] // world
            logits = model(ids)
            assert not isinstance(logits, DTensor)
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            for name, p in model.named_parameters():
                grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_tensor_parallel_matches_single_process_logits_and_grads(monkeypatch):
    import torch.multiprocessing as mp

    from lmforge.bench.server_process import free_port

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children inherit it: 2 ranks on 2 cores
    mp.spawn(_tp_worker, args=(2, free_port()), nprocs=2, join=True)
