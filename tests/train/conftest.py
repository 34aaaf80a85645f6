"""A small labelled corpus where the label depends on a combination of words.

Each document names a speed word and a price word among filler words (English or Chinese):
fast+cheap -> good, slow+expensive -> bad, anything else -> mixed. No single word decides the
label, so a model that beats the majority class (mixed, ~50%) has learned the combination.
"""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lmforge.config import RunConfig
from lmforge.workspace import Workspace

torch.set_num_threads(1)

SPEED = {"fast": ["fast", "quick", "快速"], "slow": ["slow", "late", "缓慢"]}
PRICE = {"cheap": ["cheap", "affordable", "便宜"], "expensive": ["expensive", "pricey", "昂贵"]}
FILLER = ["the", "a", "this", "order", "phone", "shipping", "box", "item", "was", "and"]
FILLER += ["very", "really", "手机", "订单", "包裹", "这个", "非常"]


def _make_docs(n: int, seed: int = 0, unlabelled: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n + unlabelled):
        speed, price = rng.choice(list(SPEED)), rng.choice(list(PRICE))
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), rng.choice(SPEED[speed]))
        words.insert(rng.randint(0, len(words)), rng.choice(PRICE[price]))
        label = {("fast", "cheap"): "good", ("slow", "expensive"): "bad"}.get(
            (speed, price), "mixed"
        )
        docs.append(
            {
                "id": f"doc-{i:05d}",
                "text": " ".join(words),
                "source": "synthetic",
                "label": label if i < n else None,
                "lang": "en",
                "meta": json.dumps({"row": i}),
            }
        )
    return docs


def _write_clean(ws: Workspace, docs: list[dict], shards: int = 2) -> list[Path]:
    clean = ws.stage_dir("data") / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(shards):
        part = docs[k::shards]
        table = pa.table({col: [d[col] for d in part] for col in docs[0]})
        path = clean / f"part-{k:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny_run_config(tmp_path: Path) -> RunConfig:
    cfg = RunConfig(workdir=str(tmp_path / "run"))
    cfg.train.model.d_model = 32
    cfg.train.model.n_heads = 2
    cfg.train.model.d_ff = 64
    cfg.train.model.n_layers = 1
    cfg.train.model.max_len = 32
    cfg.train.tokenizer.vocab_size = 200
    cfg.train.batch_size = 32
    cfg.train.max_steps = 150
    cfg.train.warmup_steps = 10
    cfg.train.lr = 3e-3
    cfg.train.eval_every = 50
    cfg.train.checkpoint_every = 50
    cfg.train.threads = 1
    return cfg


@pytest.fixture
def make_docs():
    return _make_docs


@pytest.fixture
def write_clean():
    return _write_clean
