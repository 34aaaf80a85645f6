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


def _two_versions(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register("clf", model_folder(tmp_path, "a"), alias="production")
    reg.register("clf", model_folder(tmp_path, "b", b"other"))
    return reg


def test_rollback_undoes_the_latest_promotion_and_is_recorded(tmp_path):
    reg = _two_versions(tmp_path)
    reg.set_alias("clf", "production", 2)
    assert reg.rollback("clf") == (2, 1)
    assert reg.resolve("clf").version == 1
    moves = [(c.old_version, c.new_version) for c in reg.history("clf", "production")]
    assert moves == [(None, 1), (1, 2), (2, 1)]
    assert reg.rollback("clf") == (1, 2)  # a second rollback undoes the first
    assert reg.resolve("clf").version == 2


def test_rollback_without_an_earlier_version_is_a_clear_error(tmp_path):
    reg = _two_versions(tmp_path)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback("clf")
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        reg.rollback("clf", "canary")
    assert reg.resolve("clf").version == 1


def test_readers_always_resolve_a_version_while_the_alias_moves(tmp_path):
    import threading

    reg = _two_versions(tmp_path)
    seen, errors, stop = set(), [], threading.Event()

    def reader() -> None:
        other = ModelRegistry(tmp_path / "reg", create=False)
        while not stop.is_set():
            try:
                seen.add(other.resolve("clf").version)
            except Exception as exc:  # any failed lookup is a dropped request
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            reg.set_alias("clf", "production", 2)
            reg.rollback("clf")
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert seen <= {1, 2} and 1 in seen


def test_snapshot_token_changes_with_aliases_and_routing(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register("clf", model_folder(tmp_path, "a"), alias="production")
    reg.register("clf", model_folder(tmp_path, "b", b"other"))
    first = reg.snapshot()
    assert first.aliases == {"clf": {"production": 1}} and first.routing == {}
    assert reg.snapshot().token == first.token  # nothing changed, nothing to reload

    reg.set_alias("clf", "canary", 2)
    second = reg.snapshot()
    assert second.aliases["clf"] == {"production": 1, "canary": 2}
    assert second.token != first.token

    reg.set_routing("clf", {"canary_weight": 0.25})
    third = reg.snapshot()
    assert third.routing == {"clf": {"canary_weight": 0.25}}
    assert reg.routing("clf") == {"canary_weight": 0.25}
    assert third.token != second.token

    assert reg.remove_alias("clf", "canary") == 2
    assert reg.snapshot().aliases["clf"] == {"production": 1}
    assert reg.snapshot().token != third.token


def test_routing_and_alias_removal_errors_name_the_model(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.register("clf", model_folder(tmp_path, "a"), alias="production")
    with pytest.raises(RegistryError, match=r"no model 'other'.*clf"):
        reg.set_routing("other", {})
    with pytest.raises(RegistryError, match="no alias 'shadow'"):
        reg.remove_alias("clf", "shadow")
    assert reg.routing("clf") == {}
