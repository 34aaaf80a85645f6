import pytest

from lmforge.registry import ModelRegistry, RegistryError


def model_folder(tmp_path, name="m", payload=b"weights"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_text("{}")
    return folder


def test_versions_aliases_and_history(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    v1 = reg.register("clf", model_folder(tmp_path, "a"), {"acc": 0.8}, alias="production")
    v2 = reg.register("clf", model_folder(tmp_path, "b", b"other"), {"acc": 0.9})
    assert (v1.version, v2.version) == (1, 2)
    assert v1.content_hash != v2.content_hash
    assert reg.resolve("clf").version == 1
    reg.set_alias("clf", "production", 2)
    assert reg.resolve().version == 2
    assert reg.resolve("clf", 1).metrics == {"acc": 0.8}
    assert (v2.path / "model.safetensors").read_bytes() == b"other"
    reg.update_metrics("clf", 2, {"latency_ms": 3.0})
    assert reg.get("clf", 2).metrics == {"acc": 0.9, "latency_ms": 3.0}


def test_pickle_files_are_refused(tmp_path):
    folder = model_folder(tmp_path)
    (folder / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(RegistryError, match=r"model\.bin"):
        ModelRegistry(tmp_path / "reg").register("clf", folder)


def test_missing_registry_and_alias_are_clear_errors(tmp_path):
    with pytest.raises(RegistryError, match="no model registry"):
        ModelRegistry(tmp_path / "none", create=False)
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="holds no model"):
        reg.resolve()
    reg.register("clf", model_folder(tmp_path))
    with pytest.raises(RegistryError, match="no alias 'production'"):
        reg.resolve("clf")
    with pytest.raises(RegistryError, match="no version 7"):
        reg.get("clf", 7)
