import pytest
import torch

from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.text.tokenizer import train_tokenizer

torch.set_num_threads(1)

TEXTS = [
    "The delivery was late and the box was damaged.",
    "Great phone, the battery lasts two days.",
    "物流很快，包装完好，非常满意。",
    "电池不耐用，屏幕也有划痕。",
] * 10


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=200)


@pytest.fixture
def tiny_model(tokenizer) -> EncoderClassifier:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(),
        n_classes=3,
        d_model=32,
        n_heads=4,
        d_ff=64,
        max_len=24,
    )
    return EncoderClassifier(cfg).eval()
