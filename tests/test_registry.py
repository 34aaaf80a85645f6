import sqlite3

import pytest

from lmforge.registry import URL_ENV, ModelRegistry, RegistryError

pytest_plugins = ["postgres_server"]  # the postgres_url fixture (a private PostgreSQL cluster)


@pytest.fixture(autouse=True, params=["sqlite", "postgres"])
def registry_backend(request, monkeypatch):
    """Every test runs twice: metadata in ROOT/registry.sqlite, then in PostgreSQL.

    The tests themselves do not change: `ModelRegistry(root)` picks the database up from
    LMFORGE_REGISTRY_URL, as a deployed server would.
    """
    if request.param == "postgres":
        monkeypatch.setenv(URL_ENV, request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv(URL_ENV, raising=False)
    return request.param


sqlite_only = pytest.mark.parametrize("registry_backend", ["sqlite"], indirect=True)


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


def test_snapshot_token_changes_on_every_change_even_to_the_same_state(tmp_path):
    reg = _two_versions(tmp_path)
    tokens = [reg.snapshot().token]
    for _ in range(3):  # the same alias moves back and forth within one second
        reg.set_alias("clf", "production", 2)
        tokens.append(reg.snapshot().token)
        reg.rollback("clf")
        tokens.append(reg.snapshot().token)
    reg.set_routing("clf", {"canary_weight": 0.1})
    tokens.append(reg.snapshot().token)
    reg.set_routing("clf", {"canary_weight": 0.1})  # same policy again: still a change
    tokens.append(reg.snapshot().token)
    assert len(set(tokens)) == len(tokens)


def test_versions_lists_every_version_with_its_aliases(tmp_path):
    reg = _two_versions(tmp_path)
    reg.register("other", model_folder(tmp_path, "c", b"third"), alias="canary")
    reg.set_alias("clf", "shadow", 1)
    listed = [(v.name, v.version, v.aliases) for v in reg.versions()]
    assert listed == [
        ("clf", 1, ("production", "shadow")),
        ("clf", 2, ()),
        ("other", 1, ("canary",)),
    ]
    assert [v.version for v in reg.versions("clf")] == [1, 2]
    assert reg.names() == ["clf", "other"]
    assert reg.versions("none") == []


@sqlite_only
def test_a_registry_sqlite_from_before_the_url_backend_still_opens(tmp_path):
    # The schema of earlier lmforge versions: no registry_state table, history ordered by rowid.
    root = tmp_path / "reg"
    root.mkdir()
    conn = sqlite3.connect(root / "registry.sqlite")
    conn.executescript(
        """
        CREATE TABLE versions (name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,
            content_hash TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}',
            tags TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
            PRIMARY KEY (name, version));
        CREATE TABLE aliases (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
            PRIMARY KEY (name, alias));
        CREATE TABLE routing (name TEXT PRIMARY KEY, policy TEXT NOT NULL,
            updated_at REAL NOT NULL);
        CREATE TABLE alias_history (name TEXT NOT NULL, alias TEXT NOT NULL,
            old_version INTEGER, new_version INTEGER NOT NULL, changed_at REAL NOT NULL);
        INSERT INTO versions VALUES ('clf', 1, 'artifacts/clf/1', 'h1', '{"acc": 0.5}', '{}', 1.0);
        INSERT INTO versions VALUES ('clf', 2, 'artifacts/clf/2', 'h2', '{}', '{}', 2.0);
        INSERT INTO aliases VALUES ('clf', 'production', 2);
        INSERT INTO alias_history VALUES ('clf', 'production', NULL, 1, 1.0);
        INSERT INTO alias_history VALUES ('clf', 'production', 1, 2, 2.0);
        """
    )
    conn.commit()
    conn.close()
    reg = ModelRegistry(root, create=False)
    assert reg.resolve("clf").version == 2
    assert reg.get("clf", 1).metrics == {"acc": 0.5}
    first = reg.snapshot()
    assert first.aliases == {"clf": {"production": 2}}
    assert reg.rollback("clf") == (2, 1)
    assert reg.snapshot().token != first.token
    moves = [(c.old_version, c.new_version) for c in reg.history("clf")]
    assert moves == [(None, 1), (1, 2), (2, 1)]


@sqlite_only
def test_a_live_registry_sees_a_recreated_registry_sqlite(tmp_path):
    import shutil

    reg = _two_versions(tmp_path)
    assert reg.resolve("clf").version == 1
    shutil.rmtree(tmp_path / "reg")  # e.g. the workspace was wiped and retrained
    fresh = ModelRegistry(tmp_path / "reg")
    fresh.register("new", model_folder(tmp_path, "c", b"third"), alias="production")
    assert reg.names() == ["new"]  # not the deleted file through a pooled connection


@sqlite_only
def test_bad_urls_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(RegistryError, match=r"'mysql'.*postgresql\+psycopg"):
        ModelRegistry(tmp_path / "reg", url="mysql://u:secret@db/x")
    with pytest.raises(RegistryError, match="not a database URL") as bad:
        ModelRegistry(tmp_path / "reg", url="postgres ql://u:hunter2@db/x")
    assert "hunter2" not in str(bad.value)
    monkeypatch.setenv(URL_ENV, "mysql://db/x")
    with pytest.raises(RegistryError, match=URL_ENV):
        ModelRegistry(tmp_path / "reg")
    # url="" keeps the SQLite file even when the variable is set
    assert ModelRegistry(tmp_path / "reg", url="").names() == []
    assert (tmp_path / "reg" / "registry.sqlite").is_file()


@sqlite_only
def test_a_sqlite_url_keeps_metadata_apart_from_the_artifacts(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    with pytest.raises(RegistryError, match="no model registry"):
        ModelRegistry(tmp_path / "reg", create=False, url=url)
    reg = ModelRegistry(tmp_path / "reg", url=url)
    version = reg.register("clf", model_folder(tmp_path), alias="production")
    assert (version.path / "model.safetensors").is_file()
    assert version.path.is_relative_to(tmp_path / "reg")
    assert not (tmp_path / "reg" / "registry.sqlite").exists()
    assert ModelRegistry(tmp_path / "reg", create=False, url=url).resolve().version == 1
