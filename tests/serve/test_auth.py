import hashlib
import re
import time

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lmforge.serve.auth import (
    ROLES,
    ApiKey,
    AuthError,
    KeyStore,
    RateLimiter,
    TokenBucket,
    presented_key,
)
from lmforge.serve.keys_cli import keys_app


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _split(plaintext: str) -> tuple[str, str]:
    assert plaintext.startswith("lmf_")
    key_id, _, secret = plaintext[4:].partition("_")
    return key_id, secret


# --- KeyStore --------------------------------------------------------------------------------


def test_create_then_verify(tmp_path):
    store = KeyStore(tmp_path)
    key, plaintext = store.create("team-a", role="admin", rate=5, burst=7)
    key_id, secret = _split(plaintext)
    assert key.key_id == key_id and len(secret) >= 43
    assert (key.name, key.role, key.rate, key.burst, key.revoked_at) == (
        "team-a",
        "admin",
        5,
        7,
        None,
    )
    assert isinstance(key.rate, float)

    found = store.verify(plaintext)
    assert found == key
    assert found.allows("predict") and found.allows("admin")
    assert (tmp_path / "auth.sqlite").is_file()


def test_predict_role_is_not_admin(tmp_path):
    key, _ = KeyStore(tmp_path).create("svc")
    assert key.role == "predict" and ROLES == ("predict", "admin")
    assert key.allows("predict") and not key.allows("admin")
    assert (key.rate, key.burst) == (None, None)


def test_wrong_unknown_and_malformed_keys_do_not_verify(tmp_path):
    store = KeyStore(tmp_path)
    _, plaintext = store.create("svc")
    key_id, secret = _split(plaintext)
    other_id = ("0" if key_id[0] != "0" else "1") + key_id[1:]
    bad = [
        f"lmf_{key_id}_{secret[:-1]}x" if secret[-1] != "x" else f"lmf_{key_id}_{secret[:-1]}y",
        f"lmf_{key_id}_{secret}extra",
        f"lmf_{other_id}_{secret}",  # right secret, unknown id
        f"lmf_{key_id.upper()}_{secret}",
        f"LMF_{key_id}_{secret}",
        f"xx_{key_id}_{secret}",
        f"lmf_{key_id}_",  # empty secret
        f"lmf_{key_id}",
        "",
        "lmf_",
        "lmf__",
        "nounderscoresatall",
        secret,
        f"lmf_{key_id}_{secret}" + "a" * 1_000_000,  # huge: refused before hashing
        "lmf_" + "é" * 16 + "_" + secret,
        f"lmf_{key_id}\n_{secret}",
    ]
    for presented in bad:
        assert store.verify(presented) is None, presented[:80]
    assert store.verify(plaintext) is not None  # the real one still works
    assert store.verify(None) is None  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_verify_never_raises_on_garbage(tmp_path_factory, text):
    store = KeyStore(tmp_path_factory.mktemp("garbage"))
    assert store.verify(text) is None
    assert store.verify("lmf_0123456789abcdef_" + text) is None


def test_database_holds_only_the_hash(tmp_path):
    store = KeyStore(tmp_path)
    _, plaintext = store.create("svc")
    _, secret = _split(plaintext)
    raw = (tmp_path / "auth.sqlite").read_bytes()
    assert secret.encode() not in raw
    assert plaintext.encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    listed = store.list()[0]
    assert secret not in repr(listed) and not hasattr(listed, "secret_sha256")


def test_readers_do_not_create_the_database(tmp_path):
    store = KeyStore(tmp_path / "nowhere")
    assert store.verify("lmf_0123456789abcdef_secret") is None
    assert store.list() == []
    assert store.count_active() == 0
    with pytest.raises(AuthError, match="lmforge keys list"):
        store.revoke("0123456789abcdef")
    assert not (tmp_path / "nowhere").exists()


def test_revoked_key_stops_verifying_within_the_ttl_in_every_worker(tmp_path):
    worker = KeyStore(tmp_path, cache_ttl_s=0.2)
    admin = KeyStore(tmp_path, cache_ttl_s=0.2)
    key, plaintext = admin.create("svc")
    assert worker.verify(plaintext) == key  # now cached in the worker

    revoked = admin.revoke(key.key_id)
    assert revoked.revoked_at is not None and not revoked.active
    assert admin.verify(plaintext) is None  # the revoking process drops its cache at once
    time.sleep(0.3)
    assert worker.verify(plaintext) is None


def test_cache_serves_repeated_verifies_without_sqlite(tmp_path):
    store = KeyStore(tmp_path, cache_ttl_s=60)
    key, plaintext = store.create("svc")
    assert store.verify(plaintext) == key
    (tmp_path / "auth.sqlite").unlink()  # the hot path must not need the file
    assert store.verify(plaintext) == key
    _, secret = _split(plaintext)
    assert store.verify(f"lmf_{key.key_id}_{secret[::-1]}") is None  # cache keeps checking


def test_two_workers_share_keys(tmp_path):
    a = KeyStore(tmp_path, cache_ttl_s=0.0)
    b = KeyStore(tmp_path, cache_ttl_s=0.0)
    k1, p1 = a.create("one")
    k2, p2 = b.create("two", rate=1.5)
    assert b.verify(p1) == k1 and a.verify(p2) == k2
    assert [k.name for k in a.list()] == ["one", "two"] == [k.name for k in b.list()]
    a.revoke(k2.key_id)
    assert b.verify(p2) is None
    assert a.count_active() == b.count_active() == 1


def test_revoke_is_idempotent_and_listed(tmp_path):
    store = KeyStore(tmp_path)
    key, _ = store.create("svc")
    first = store.revoke(key.key_id)
    again = store.revoke(key.key_id)
    assert first.revoked_at == again.revoked_at
    assert store.list()[0].revoked_at == first.revoked_at
    assert store.count_active() == 0


def test_revoke_unknown_id_says_how_to_find_ids(tmp_path):
    store = KeyStore(tmp_path)
    store.create("svc")
    with pytest.raises(AuthError) as info:
        store.revoke("feedfacefeedface")
    assert "feedfacefeedface" in str(info.value) and "lmforge keys list" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"role": "boss"}, "'boss'"),
        ({"rate": 0}, "rate 0"),
        ({"rate": -1.0}, "rate -1.0"),
        ({"rate": float("inf")}, "rate inf"),
        ({"rate": float("nan")}, "rate nan"),
        ({"burst": 0}, "burst 0"),
        ({"burst": 2.5}, "burst 2.5"),
    ],
)
def test_create_rejects_bad_values(tmp_path, kwargs, needle):
    with pytest.raises(AuthError) as info:
        KeyStore(tmp_path).create("svc", **kwargs)
    assert needle in str(info.value)
    if "role" in kwargs:
        assert "predict" in str(info.value) and "admin" in str(info.value)
    assert KeyStore(tmp_path).list() == []


def test_create_rejects_empty_name(tmp_path):
    with pytest.raises(AuthError, match="name"):
        KeyStore(tmp_path).create("  ")


# --- presented_key ---------------------------------------------------------------------------


def test_presented_key_from_both_header_styles():
    assert presented_key({"Authorization": "Bearer lmf_a_b"}) == "lmf_a_b"
    assert presented_key({"authorization": "bearer   lmf_a_b  "}) == "lmf_a_b"
    assert presented_key({"X-API-Key": "lmf_c_d"}) == "lmf_c_d"
    raw = [(b"host", b"x"), (b"x-api-key", b"lmf_c_d")]
    assert presented_key(raw) == "lmf_c_d"
    raw = [(b"x-api-key", b"lmf_c_d"), (b"authorization", b"Bearer lmf_a_b")]
    assert presented_key(raw) == "lmf_a_b"  # Bearer wins when both are sent


def test_presented_key_ignores_other_schemes_and_blanks():
    assert presented_key({}) is None
    assert presented_key([]) is None
    assert presented_key({"Authorization": "Basic dXNlcjpwdw=="}) is None
    assert presented_key({"Authorization": "Bearer "}) is None
    assert presented_key({"X-API-Key": "   "}) is None
    both = {"Authorization": "Basic dXNlcjpwdw==", "X-API-Key": "lmf_c_d"}
    assert presented_key(both) == "lmf_c_d"


# --- TokenBucket -----------------------------------------------------------------------------


def test_bucket_burst_then_refusal_with_retry_after():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(0.5)  # a refusal consumes nothing
    clock.advance(0.25)
    assert bucket.take() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_bucket_refills_up_to_burst_only():
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=4, clock=clock)
    for _ in range(4):
        bucket.take()
    clock.advance(3600)
    assert [bucket.take() for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, pytest.approx(0.1)]


def test_waiting_exactly_the_retry_after_is_enough():
    clock = FakeClock()
    bucket = TokenBucket(rate=3.0, burst=1, clock=clock)
    for _ in range(50):
        assert bucket.take() == 0.0
        wait = bucket.take()
        assert wait > 0
        clock.advance(wait)


def test_bucket_takes_several_tokens_and_rejects_impossible_requests():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=5, clock=clock)
    assert bucket.take(4) == 0.0
    assert bucket.take(3) == pytest.approx(2.0)
    with pytest.raises(AuthError, match="6"):
        bucket.take(6)
    with pytest.raises(AuthError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(AuthError):
        TokenBucket(rate=1, burst=0)


def test_bucket_survives_a_clock_stepping_back():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    bucket.take()
    clock.advance(-100)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(1.0)


# --- RateLimiter -----------------------------------------------------------------------------


def _key(key_id: str, rate: float | None = None, burst: int | None = None) -> ApiKey:
    return ApiKey(key_id, key_id, "predict", rate, burst, 0.0, None)


def test_limiter_isolates_keys_and_clients():
    clock = FakeClock()
    limiter = RateLimiter(default_rate=1.0, default_burst=2, clock=clock)
    a, b = _key("a" * 16), _key("b" * 16)
    assert [limiter.check(a, "1.2.3.4") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check(a, "1.2.3.4") == pytest.approx(1.0)
    assert limiter.check(b, "1.2.3.4") == 0.0  # same address, other key: own bucket
    assert limiter.check(None, "1.2.3.4") == 0.0  # no key: bucket per address
    assert limiter.check(None, "1.2.3.4") == 0.0
    assert limiter.check(None, "1.2.3.4") > 0
    assert limiter.check(None, "5.6.7.8") == 0.0
    clock.advance(1.0)
    assert limiter.check(a, "9.9.9.9") == 0.0  # a key's bucket follows it across addresses


def test_limiter_uses_a_keys_own_limits():
    clock = FakeClock()
    limiter = RateLimiter(default_rate=1.0, default_burst=1, clock=clock)
    fast = _key("f" * 16, rate=10.0, burst=5)
    assert [limiter.check(fast, "c") for _ in range(5)] == [0.0] * 5
    assert limiter.check(fast, "c") == pytest.approx(0.1)
    half = _key("e" * 16, burst=3)  # own burst, default rate
    assert [limiter.check(half, "c") for _ in range(3)] == [0.0] * 3
    assert limiter.check(half, "c") == pytest.approx(1.0)


def test_limiter_memory_is_bounded_lru():
    clock = FakeClock()
    limiter = RateLimiter(default_rate=1.0, default_burst=1, clock=clock, max_keys=3)
    for i in range(1000):
        limiter.check(None, f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 3

    keep, drop = _key("1" * 16), _key("2" * 16)
    limiter.check(keep, "c")
    limiter.check(drop, "c")
    assert limiter.check(keep, "c") > 0  # touch `keep`: now most recently used
    limiter.check(None, "new-1")
    limiter.check(None, "new-2")  # evicts `drop`, the least recently used
    assert len(limiter) == 3
    assert limiter.check(keep, "c") > 0  # still remembered: still empty
    assert limiter.check(drop, "c") == 0.0  # forgotten: comes back full


def test_limiter_rejects_bad_settings():
    with pytest.raises(AuthError, match="max_keys 0"):
        RateLimiter(1.0, 1, max_keys=0)
    with pytest.raises(AuthError, match="rate -2"):
        RateLimiter(-2, 1)


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def lmforge_main():
    """`lmforge.cli.main` with the keys sub-app mounted as the main CLI mounts it."""
    from lmforge import cli

    mounted = any(g.name == "keys" for g in cli.app.registered_groups)
    if not mounted:
        cli.app.add_typer(keys_app, name="keys")
        info = cli.app.registered_groups[-1]
    yield cli.main
    if not mounted:
        cli.app.registered_groups.remove(info)


def test_cli_create_list_revoke(tmp_path, capsys, lmforge_main):
    reg = str(tmp_path / "registry")
    assert (
        lmforge_main(["keys", "create", "ci-bot", "--rate", "2.5", "--burst", "9", "-r", reg]) == 0
    )
    out, err = capsys.readouterr()
    plaintext = out.strip()
    assert len(out.strip().splitlines()) == 1 and plaintext.startswith("lmf_")
    key_id, secret = _split(plaintext)
    assert "not shown again" in err and key_id in err and secret not in err

    store = KeyStore(reg)
    key = store.verify(plaintext)
    assert key is not None and (key.name, key.role, key.rate, key.burst) == (
        "ci-bot",
        "predict",
        2.5,
        9,
    )

    assert lmforge_main(["keys", "create", "ops", "--role", "admin", "--registry", reg]) == 0
    admin_plain = capsys.readouterr().out.strip()

    assert lmforge_main(["keys", "list", "-r", reg]) == 0
    table = capsys.readouterr().out
    assert key_id in table and "ci-bot" in table and "ops" in table and "admin" in table
    assert "2.5" in table and " 9 " in table
    assert secret not in table and _split(admin_plain)[1] not in table
    assert hashlib.sha256(secret.encode()).hexdigest()[:12] not in table

    assert lmforge_main(["keys", "revoke", key_id, "-r", reg]) == 0
    assert key_id in capsys.readouterr().out
    assert KeyStore(reg).verify(plaintext) is None
    assert KeyStore(reg).verify(admin_plain) is not None
    assert lmforge_main(["keys", "list", "-r", reg]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if key_id in line]
    # created and revoked dates (an 80-column table wraps the times onto the next line)
    assert len(rows) == 1 and len(re.findall(r"\d{4}-\d{2}-\d{2}", rows[0])) == 2


def test_cli_bad_role_is_one_error_line_exit_2(tmp_path, capsys, lmforge_main):
    reg = tmp_path / "registry"
    assert lmforge_main(["keys", "create", "x", "--role", "boss", "-r", str(reg)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "'boss'" in lines[0] and "predict" in lines[0]
    assert KeyStore(reg).list() == []


def test_cli_revoke_unknown_is_one_error_line_exit_2(tmp_path, capsys, lmforge_main):
    assert lmforge_main(["keys", "revoke", "nope", "-r", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "'nope'" in err


def test_cli_list_empty_and_help(tmp_path, capsys, lmforge_main):
    assert lmforge_main(["keys", "list", "-r", str(tmp_path / "none")]) == 0
    assert "no API keys" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert lmforge_main(["keys", "--help"]) == 0
    out = capsys.readouterr().out
    assert "create" in out and "revoke" in out


def test_keys_app_mounts_on_any_typer_app(tmp_path):
    app = typer.Typer()
    app.add_typer(keys_app, name="keys")
    result = CliRunner().invoke(app, ["keys", "create", "svc", "-r", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert KeyStore(tmp_path).count_active() == 1
