import pytest


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory, tiny_model_dir):
    """A second tiny model (other random weights, same labels and tokenizer) for v2 tests."""
    import torch
    from tokenizers import Tokenizer

    from lmforge.models.encoder import EncoderClassifier
    from lmforge.models.export import encoder_config_from, load_model_dir, save_model_dir

    _, tokenizer, config = load_model_dir(tiny_model_dir)
    torch.manual_seed(1)
    model = EncoderClassifier(encoder_config_from(config)).eval()
    out = tmp_path_factory.mktemp("tiny-model-b") / "model"
    assert isinstance(tokenizer, Tokenizer)
    return save_model_dir(out, model, tokenizer, list(config["labels"]))


@pytest.fixture
def two_version_registry(tmp_path, tiny_model_dir, tiny_model_dir_b):
    """Model "tiny": v1 (production) and v2 (no alias yet)."""
    from lmforge.registry import ModelRegistry

    root = tmp_path / "registry"
    reg = ModelRegistry(root)
    reg.register("tiny", tiny_model_dir, alias="production")
    reg.register("tiny", tiny_model_dir_b)
    return root
