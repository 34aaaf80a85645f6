import os

import pytest

# One thread per test process: the suite runs on 2 cores and torch would oversubscribe them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- a tiny real model, registry and workspace (serve, compress and bench tests) ----------------

TINY_LABELS = ["complaint", "praise", "question"]
TINY_TEXTS = {
    "complaint": [
        "The delivery was late and the box was damaged.",
        "Customer service never answered my emails.",
        "The screen cracked after one week of normal use.",
        "物流太慢了，包装也破了。",
        "客服态度很差，问题一直没解决。",
    ],
    "praise": [
        "Great phone, the battery lasts two days.",
        "Fast shipping and the quality is excellent.",
        "The support team fixed my problem in minutes.",
        "音质很好，佩戴舒服，非常满意。",
        "物流很快，包装完好，值得推荐。",
    ],
    "question": [
        "Does this model support wireless charging?",
        "How long is the warranty for the laptop?",
        "Can I change my delivery address after ordering?",
        "这个套餐每个月多少钱？",
        "请问可以开发票吗？",
    ],
}


def _tiny_rows() -> list[dict[str, str]]:
    rows = []
    for label, texts in TINY_TEXTS.items():
        for i, text in enumerate(texts):
            rows.append({"id": f"{label}-{i}", "text": text, "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved, random-init encoder classifier (3 labels, d_model 32): a real model folder."""
    import torch

    from lmforge.models.encoder import EncoderClassifier, EncoderConfig
    from lmforge.models.export import save_model_dir
    from lmforge.text.tokenizer import train_tokenizer

    texts = [r["text"] for r in _tiny_rows()] * 3
    tokenizer = train_tokenizer(texts, vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(),
        n_classes=len(TINY_LABELS),
        d_model=32,
        n_layers=1,
        n_heads=4,
        d_ff=64,
        max_len=32,
    )
    out = tmp_path_factory.mktemp("tiny-model") / "model"
    return save_model_dir(out, EncoderClassifier(cfg).eval(), tokenizer, TINY_LABELS)


@pytest.fixture
def tiny_registry(tmp_path, tiny_model_dir):
    """A registry holding `tiny_model_dir` as model "tiny", version 1, alias production."""
    from lmforge.registry import ModelRegistry

    root = tmp_path / "registry"
    ModelRegistry(root).register("tiny", tiny_model_dir, metrics={}, alias="production")
    return root


@pytest.fixture
def tiny_workspace(tmp_path, tiny_model_dir):
    """A Workspace whose registry holds the tiny model and whose train/eval.parquet has 15 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.registry import ModelRegistry
    from lmforge.workspace import Workspace

    ws = Workspace(tmp_path / "run")
    ModelRegistry(ws.registry_dir).register("tiny", tiny_model_dir, metrics={}, alias="production")
    pq.write_table(pa.Table.from_pylist(_tiny_rows()), ws.stage_dir("train") / "eval.parquet")
    return ws
