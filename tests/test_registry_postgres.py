"""The registry with its metadata in PostgreSQL: what only a shared server database shows.

tests/test_registry.py runs every registry behaviour against both databases; here: several
workers sharing one database, concurrent writers, and connection failures.
"""

import itertools
import os
import subprocess
import sys
import threading

import pytest

from lmforge.registry import URL_ENV, ModelRegistry, RegistryError

# The postgres_server / postgres_url fixtures. Import from that module only inside tests: a
# module-level import would run before pytest can register it (and rewrite its asserts).
pytest_plugins = ["postgres_server"]


def model_folder(tmp_path, name, payload):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture(autouse=True)
def _no_registry_url_from_outside(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)  # each test names its database


@pytest.fixture
def shared(tmp_path, postgres_url):
    """A registry with clf v1 (production) and v2, in a fresh database."""
    reg = ModelRegistry(tmp_path / "reg", url=postgres_url)
    reg.register("clf", model_folder(tmp_path, "a", b"one"), alias="production")
    reg.register("clf", model_folder(tmp_path, "b", b"two"))
    return reg


def test_two_workers_see_each_others_alias_changes(tmp_path, postgres_url, shared):
    worker_a = shared
    worker_b = ModelRegistry(tmp_path / "reg", create=False, url=postgres_url)
    before = worker_b.snapshot()
    assert before.aliases == {"clf": {"production": 1}}

    worker_a.set_alias("clf", "canary", 2)
    seen = worker_b.snapshot()
    assert seen.aliases == {"clf": {"production": 1, "canary": 2}}
    assert seen.token != before.token  # the server's poll would reload

    worker_b.set_routing("clf", {"canary_weight": 0.2})
    worker_b.set_alias("clf", "production", 2)
    assert worker_a.routing("clf") == {"canary_weight": 0.2}
    assert worker_a.resolve("clf").version == 2
    assert worker_a.rollback("clf") == (2, 1)
    assert worker_b.resolve("clf").version == 1
    assert [(c.old_version, c.new_version) for c in worker_b.history("clf", "production")] == [
        (None, 1),
        (1, 2),
        (2, 1),
    ]


def test_a_worker_in_another_process_uses_the_url_from_the_environment(
    tmp_path, postgres_url, shared
):
    # A separate process, configured only through LMFORGE_REGISTRY_URL, as a deployed server.
    script = (
        "from lmforge.registry import ModelRegistry\n"
        f"reg = ModelRegistry({str(tmp_path / 'other-host')!r}, create=False)\n"
        "reg.set_alias('clf', 'production', 2)\n"
        "print(reg.resolve('clf').path)\n"
    )
    env = {**os.environ, URL_ENV: postgres_url}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # Metadata is shared; artifact paths resolve under each worker's own root.
    assert done.stdout.strip() == str(tmp_path / "other-host" / "artifacts" / "clf" / "2")
    assert shared.resolve("clf").version == 2


def test_readers_always_resolve_a_version_while_workers_promote_and_roll_back(
    tmp_path, postgres_url, shared
):
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        other = ModelRegistry(tmp_path / "reg", create=False, url=postgres_url)
        while not stop.is_set():
            try:
                seen.add(other.resolve("clf").version)
                snap = other.snapshot()
                assert snap.aliases["clf"]["production"] in (1, 2)
            except BaseException as exc:  # any failed lookup is a dropped request
                errors.append(exc)

    def writer() -> None:
        # A second worker moving the alias concurrently: the write lock must serialize them.
        other = ModelRegistry(tmp_path / "reg", create=False, url=postgres_url)
        try:
            for _ in range(15):
                other.set_alias("clf", "production", 2)
                other.rollback("clf")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(15):
            shared.set_alias("clf", "production", 2)
            shared.rollback("clf")
    finally:
        threads[1].join(60)
        stop.set()
        threads[0].join(60)
    assert errors == []
    assert seen <= {1, 2} and seen
    # Every move starts where the previous one ended: no two writers read the same state.
    moves = shared.history("clf", "production")
    assert len(moves) == 1 + 4 * 15
    for before, after in itertools.pairwise(moves):
        assert after.old_version == before.new_version


def test_workers_opening_a_new_database_together_create_the_tables_once(tmp_path, postgres_url):
    errors: list[BaseException] = []

    def open_registry(i: int) -> None:
        try:
            ModelRegistry(tmp_path / f"w{i}", url=postgres_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_registry, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert ModelRegistry(tmp_path / "w0", create=False, url=postgres_url).snapshot().token[0] == 0


def test_snapshot_polls_reuse_one_pooled_connection(postgres_server, postgres_url, shared):
    for _ in range(50):
        shared.snapshot()
    assert _connections(postgres_server, postgres_url) <= 2  # the pool's (and at most one more)


def test_registries_opened_per_call_do_not_leak_connections(postgres_server, postgres_url, shared):
    import gc

    gc.disable()  # connections must close when a registry is dropped, not when the GC runs
    try:
        for _ in range(30):
            ModelRegistry(shared.root, create=False, url=postgres_url).snapshot()
        open_now = _connections(postgres_server, postgres_url)
    finally:
        gc.enable()
    assert open_now <= 2


def _connections(server, url: str) -> int:
    import psycopg

    dsn = f"host={server.host} port={server.port} user=lmforge dbname=postgres"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (url.rsplit("/", 1)[1],)
        ).fetchone()
    return int(row[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("child_uses_registry", [True, False])
def test_a_forked_worker_does_not_break_the_parents_connection(shared, child_uses_registry):
    shared.snapshot()  # the parent's pool now holds an open connection
    backend = _backend_pid(shared)
    pid = os.fork()
    if pid == 0:  # the child: leave only through os._exit, never back into pytest
        code = 1
        try:
            if child_uses_registry:
                shared.set_alias("clf", "canary", 2)  # on its own connection
            else:
                shared.close()  # as at shutdown: must not close the connections it inherited
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    aliases = shared.snapshot().aliases["clf"]
    assert aliases.get("canary") == (2 if child_uses_registry else None)
    # The same session as before the fork: the child did not end it (pool_pre_ping would
    # hide that by reconnecting, but a transaction in flight would have failed).
    assert _backend_pid(shared) == backend


def _backend_pid(registry: ModelRegistry) -> int:
    from sqlalchemy import text

    with registry._engine.connect() as conn:  # the registry's own pool
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_an_empty_database_is_not_a_registry_without_create(tmp_path, postgres_url):
    with pytest.raises(RegistryError, match=r"no model registry in .*missing tables: versions"):
        ModelRegistry(tmp_path / "reg", create=False, url=postgres_url)
    assert ModelRegistry(tmp_path / "reg", url=postgres_url).names() == []


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path, monkeypatch):
    from postgres_server import _free_port, require_postgres

    require_postgres()  # needs the psycopg driver, not a server
    url = f"postgresql://lmforge:s3cret-pw@127.0.0.1:{_free_port()}/registry"
    with pytest.raises(RegistryError) as raised:
        ModelRegistry(tmp_path / "reg", url=url)
    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert "postgresql+psycopg://lmforge:***@127.0.0.1:" in message
    assert "cannot connect" in message and "start the database server" in message
    assert "pass no url" in message

    monkeypatch.setenv(URL_ENV, url)
    with pytest.raises(RegistryError, match=f"from {URL_ENV}.*unset {URL_ENV}") as raised:
        ModelRegistry(tmp_path / "reg", create=False)
    assert "s3cret-pw" not in str(raised.value)


def test_losing_the_database_after_opening_is_a_registry_error(
    postgres_server, postgres_url, shared
):
    # The server's refresh loop logs a RegistryError once and keeps its routes; a raw
    # driver error would be logged with a traceback five times a second.
    postgres_server.drop_database(postgres_url.rsplit("/", 1)[1])
    with pytest.raises(RegistryError, match="registry database postgresql"):
        shared.snapshot()


def test_a_missing_driver_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(RegistryError, match=r"lmforge\[postgres\]"):
        ModelRegistry(tmp_path / "reg", url="postgresql://u@127.0.0.1:1/x")
