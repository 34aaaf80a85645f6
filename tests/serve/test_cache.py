import asyncio
import logging
import os
import sys
import time

import pytest

from lmforge.config import CacheConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.serve.cache import (
    LruCache,
    PredictionCache,
    RedisCache,
    cache_key,
    make_cache,
    normalise_text,
)
from redis_server import start_redis

PRED_A = {"label": "praise", "probs": {"complaint": 0.1, "praise": 0.7, "question": 0.2}}
PRED_B = {"label": "question", "probs": {"complaint": 1 / 3, "praise": 1e-300, "question": 0.5}}
PRED_ZH = {"label": "投诉", "probs": {"投诉": 0.91, "表扬": 0.09}}


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on 127.0.0.1 for this test only (skips when not installed)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        msg = "redis-py is not installed: pip install 'lmforge[redis]'"
        if os.environ.get("LMFORGE_REQUIRE_REDIS") == "1":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    with start_redis(tmp_path) as server:
        yield server


def _sync_client(server):
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)


# --- keys ------------------------------------------------------------------------------------


def test_normalise_text_strips_collapses_whitespace_and_applies_nfc():
    assert normalise_text("  hello \t\n  world  ") == "hello world"
    # NBSP and the ideographic space are whitespace too.
    assert normalise_text("a\u00a0\u00a0b\u3000c") == "a b c"
    # "e" + combining acute composes to the single code point é.
    assert normalise_text("cafe\u0301") == "caf\u00e9"
    assert normalise_text("   ") == ""
    with pytest.raises(TypeError, match="text must be str"):
        normalise_text(b"bytes")  # type: ignore[arg-type]


def test_equivalent_texts_share_a_key():
    base = cache_key("clf", 3, "abc123", "Caf\u00e9 was great")
    for variant in ["  Caf\u00e9 was great", "Cafe\u0301 was\n\tgreat ", "Caf\u00e9  was  great"]:
        assert cache_key("clf", 3, "abc123", variant) == base
    assert len(base) == 64
    assert all(c in "0123456789abcdef" for c in base)


def test_any_differing_part_gives_a_different_key():
    base = cache_key("clf", 3, "abc123", "hello")
    others = {
        cache_key("clf2", 3, "abc123", "hello"),
        cache_key("clf", 4, "abc123", "hello"),
        cache_key("clf", 3, "abc124", "hello"),
        cache_key("clf", 3, "abc123", "Hello"),  # case is meaningful to the model
        # Field boundaries are unambiguous: shifting characters between fields changes the key.
        cache_key("clf3", 3, "abc123", "hello"),
        cache_key("clf", 33, "abc123", "hello"),
    }
    assert base not in others
    assert len(others) == 6


def test_key_is_stable_across_processes_and_releases():
    # Entries in a shared Redis outlive workers: the digest must not depend on hash seeds and
    # must only change deliberately (pinned value).
    assert (
        cache_key("clf", 1, "deadbeef", "hello world")
        == "109c2daf7dc211a888be92566e243f4c538d76aa10967afa3baa9511ab1a4716"
    )


# --- LRU -------------------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_and_keeps_capacity():
    async def main():
        cache = LruCache(max_entries=3, ttl_s=60)
        await cache.set_many({"a": PRED_A, "b": PRED_B, "c": PRED_ZH})
        assert len(cache) == 3
        await cache.get_many(["a"])  # a becomes most recently used; b is now the oldest
        await cache.set_many({"d": PRED_A})
        assert len(cache) == 3
        assert await cache.get_many(["a", "b", "c", "d"]) == [PRED_A, None, PRED_ZH, PRED_A]
        # Overwriting an existing key refreshes it without growing the cache.
        await cache.set_many({"a": PRED_B})
        assert len(cache) == 3
        await cache.set_many({"e": PRED_A})  # evicts c (oldest after the lookups above)
        assert await cache.get_many(["c", "a", "e"]) == [None, PRED_B, PRED_A]
        # A batch larger than the capacity keeps only the last max_entries of it.
        await cache.set_many({f"k{i}": PRED_A for i in range(10)})
        assert len(cache) == 3
        assert await cache.get_many(["k6", "k7", "k8", "k9"]) == [None, PRED_A, PRED_A, PRED_A]

    _run(main())


def test_lru_entries_expire_after_ttl_and_are_removed():
    async def main():
        clock = FakeClock()
        cache = LruCache(max_entries=10, ttl_s=10.0, clock=clock)
        await cache.set_many({"a": PRED_A})
        clock.now += 5.0
        await cache.set_many({"b": PRED_B})
        clock.now += 4.99  # a is 9.99 s old
        assert await cache.get_many(["a", "b"]) == [PRED_A, PRED_B]
        clock.now += 0.01  # a is exactly 10 s old: expired
        assert await cache.get_many(["a", "b"]) == [None, PRED_B]
        assert len(cache) == 1  # the expired entry was dropped, not just hidden
        # Setting again restarts the TTL.
        await cache.set_many({"b": PRED_B})
        clock.now += 9.0
        assert await cache.get_many(["b"]) == [PRED_B]
        clock.now += 1.0
        assert await cache.get_many(["b"]) == [None]
        assert len(cache) == 0

    _run(main())


def test_hit_miss_counters_and_hit_rate():
    async def main():
        cache = LruCache(max_entries=10, ttl_s=60)
        assert isinstance(cache, PredictionCache)
        assert cache.kind == "lru"
        assert (cache.hits, cache.misses, cache.errors, cache.hit_rate) == (0, 0, 0, 0.0)
        assert await cache.get_many([]) == []
        assert cache.hit_rate == 0.0
        await cache.get_many(["x", "y"])
        assert (cache.hits, cache.misses, cache.hit_rate) == (0, 2, 0.0)
        await cache.set_many({"x": PRED_A})
        await cache.get_many(["x", "x", "y"])
        assert (cache.hits, cache.misses) == (2, 3)
        assert cache.hit_rate == pytest.approx(2 / 5)
        await cache.close()

    _run(main())


def test_lru_values_round_trip_exactly_and_are_isolated_from_callers():
    async def main():
        cache = LruCache(max_entries=10, ttl_s=60)
        value = {"label": "praise", "probs": {"praise": 0.1 + 0.2, "question": 5e-324}}
        await cache.set_many({"k": value, "zh": PRED_ZH})
        got, zh = await cache.get_many(["k", "zh"])
        assert got == value and zh == PRED_ZH
        assert got["probs"]["praise"] == 0.30000000000000004  # bit-exact float
        # Mutating what was stored or what came back must not change the cache.
        value["label"] = "changed"
        got["probs"]["praise"] = -1.0
        assert (await cache.get_many(["k"]))[0]["label"] == "praise"
        assert (await cache.get_many(["k"]))[0]["probs"]["praise"] == 0.30000000000000004
        with pytest.raises(ValueError):  # NaN is not JSON: refuse rather than store garbage
            await cache.set_many({"nan": {"label": "x", "probs": {"x": float("nan")}}})

    _run(main())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_entries": 0, "ttl_s": 1.0}, "max_entries must be an integer >= 1, got 0"),
        ({"max_entries": 2.5, "ttl_s": 1.0}, "max_entries must be an integer >= 1, got 2.5"),
        ({"max_entries": 5, "ttl_s": 0.0}, r"ttl_s must be > 0 seconds, got 0\.0"),
        ({"max_entries": 5, "ttl_s": -3}, "ttl_s must be > 0 seconds, got -3"),
    ],
)
def test_lru_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LruCache(**kwargs)


# --- Redis (a real redis-server) -------------------------------------------------------------


def test_redis_get_set_many_round_trip(redis_server):
    async def main():
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=2.0)
        try:
            assert cache.kind == "redis"
            assert await cache.ping() is True
            assert await cache.get_many([]) == []
            await cache.set_many({})  # no round trip, no error
            assert await cache.get_many(["a", "b"]) == [None, None]
            await cache.set_many({"a": PRED_A, "b": PRED_B, "zh": PRED_ZH})
            got = await cache.get_many(["zh", "missing", "a", "b"])
            assert got == [PRED_ZH, None, PRED_A, PRED_B]
            assert got[3]["probs"]["praise"] == 1e-300 and got[3]["probs"]["complaint"] == 1 / 3
            assert (cache.hits, cache.misses, cache.errors) == (3, 3, 0)
            assert cache.hit_rate == pytest.approx(0.5)
        finally:
            await cache.close()

    _run(main())


def test_redis_entries_carry_prefix_json_and_ttl(redis_server):
    async def main():
        cache = RedisCache(redis_server.url, ttl_s=30, prefix="t:pred:", timeout_s=2.0)
        try:
            await cache.set_many({"k1": PRED_A, "k2": PRED_ZH})
        finally:
            await cache.close()

    _run(main())
    client = _sync_client(redis_server)
    try:
        assert sorted(client.keys("*")) == [b"t:pred:k1", b"t:pred:k2"]
        for key in (b"t:pred:k1", b"t:pred:k2"):
            pttl = client.pttl(key)
            assert 0 < pttl <= 30_000
        # Stored as plain JSON text (readable by any client, never pickle).
        assert client.get("t:pred:k2").decode("utf-8").startswith('{"label":"投诉"')
    finally:
        client.close()


def test_redis_two_clients_share_entries(redis_server):
    # Several workers each hold their own client; a prediction one stores, the others hit.
    async def main():
        writer = RedisCache(redis_server.url, ttl_s=60, timeout_s=2.0)
        reader = RedisCache(redis_server.url, ttl_s=60, timeout_s=2.0)
        other_prefix = RedisCache(redis_server.url, ttl_s=60, prefix="other:", timeout_s=2.0)
        try:
            key = cache_key("clf", 1, "h", "Shared  text")
            await writer.set_many({key: PRED_A})
            same_text = cache_key("clf", 1, "h", "Shared\ttext ")
            assert await reader.get_many([same_text]) == [PRED_A]
            assert (reader.hits, writer.hits) == (1, 0)
            assert await other_prefix.get_many([key]) == [None]
        finally:
            for cache in (writer, reader, other_prefix):
                await cache.close()

    _run(main())


def test_redis_foreign_or_corrupt_values_are_misses(redis_server):
    client = _sync_client(redis_server)
    try:
        client.set("lmforge:pred:garbage", b"\x80\x04not json")
        client.set("lmforge:pred:list", b"[1, 2]")
    finally:
        client.close()

    async def main():
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=2.0)
        try:
            assert await cache.get_many(["garbage", "list"]) == [None, None]
            assert (cache.misses, cache.errors) == (2, 2)
        finally:
            await cache.close()

    _run(main())


def test_killed_redis_degrades_to_fast_misses(redis_server, caplog):
    clock = FakeClock()

    async def main():
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=0.05, clock=clock)
        try:
            await cache.set_many({"a": PRED_A})
            assert await cache.get_many(["a"]) == [PRED_A]  # pooled connection now open

            redis_server.kill()
            assert not redis_server.running

            durations = []
            for _ in range(5):
                start = time.perf_counter()
                assert await cache.get_many(["a", "b"]) == [None, None]
                await cache.set_many({"c": PRED_B})  # skipped, no exception
                durations.append(time.perf_counter() - start)
            assert max(durations) < 0.5, durations
            assert cache.errors == 10
            assert (cache.hits, cache.misses) == (1, 10)
            start = time.perf_counter()
            assert await cache.ping() is False
            assert time.perf_counter() - start < 0.5

            warnings = [r for r in caplog.records if r.name == "lmforge.serve.cache"]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            assert warnings[0].levelno == logging.WARNING
            assert "serving without the cache" in warnings[0].getMessage()

            clock.now += 31.0  # past the 30 s rate limit: one more warning
            await cache.get_many(["a"])
            await cache.get_many(["a"])
            warnings = [r for r in caplog.records if r.name == "lmforge.serve.cache"]
            assert len(warnings) == 2
        finally:
            await cache.close()

    with caplog.at_level(logging.WARNING, logger="lmforge.serve.cache"):
        _run(main())


def test_unreachable_redis_never_raises(tmp_path):
    # Nothing listens on this port: connection refused on every call, from the very first one.
    from redis_server import _free_port

    pytest.importorskip("redis")
    port = _free_port()

    async def main():
        cache = make_cache(CacheConfig(kind="redis", redis_url=f"redis://127.0.0.1:{port}/0"))
        assert isinstance(cache, RedisCache)
        try:
            start = time.perf_counter()
            assert await cache.get_many(["a"]) == [None]
            await cache.set_many({"a": PRED_A})
            assert await cache.ping() is False
            assert time.perf_counter() - start < 1.0
            assert cache.errors == 2
        finally:
            await cache.close()

    _run(main())


def test_stalled_redis_is_bounded_by_timeout_and_recovers(redis_server):
    async def main():
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=0.05)
        try:
            await cache.set_many({"a": PRED_A})
            assert await cache.get_many(["a"]) == [PRED_A]

            redis_server.pause()  # the socket stays open but nothing answers
            try:
                start = time.perf_counter()
                assert await cache.get_many(["a"]) == [None]
                await cache.set_many({"b": PRED_B})
                assert await cache.get_many(["a"]) == [None]  # a fresh connection stalls too
                elapsed = time.perf_counter() - start
                assert elapsed < 0.6, elapsed  # three calls, each cut off near 0.05 s
                assert cache.errors == 3
            finally:
                redis_server.resume()

            # Once Redis answers again the cache works again, without a restart.
            deadline = time.monotonic() + 5.0
            got = [None]
            while time.monotonic() < deadline and got != [PRED_A]:
                got = await cache.get_many(["a"])
                if got != [PRED_A]:
                    await asyncio.sleep(0.05)
            assert got == [PRED_A]
        finally:
            await cache.close()

    _run(main())


def test_redis_url_with_password_is_redacted_in_warnings(caplog):
    pytest.importorskip("redis")
    from redis_server import _free_port

    url = f"redis://user:s3cret@127.0.0.1:{_free_port()}/0"

    async def main():
        cache = RedisCache(url, ttl_s=60, timeout_s=0.05)
        try:
            await cache.get_many(["a"])
        finally:
            await cache.close()

    with caplog.at_level(logging.WARNING, logger="lmforge.serve.cache"):
        _run(main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "user:***@127.0.0.1" in text
    assert "s3cret" not in text


# --- make_cache ------------------------------------------------------------------------------


def test_make_cache_for_each_kind():
    assert make_cache(CacheConfig(kind="none")) is None

    lru = make_cache(CacheConfig(kind="lru", max_entries=7, ttl_s=12.5))
    assert isinstance(lru, LruCache)
    assert (lru.max_entries, lru.ttl_s) == (7, 12.5)

    pytest.importorskip("redis")
    red = make_cache(CacheConfig(kind="redis", redis_url="redis://127.0.0.1:1/0", ttl_s=2.5))
    assert isinstance(red, RedisCache)
    assert (red.ttl_ms, red.prefix, red.timeout_s) == (2500, "lmforge:pred:", 0.05)
    _run(red.close())


def test_make_cache_redis_without_url_names_the_setting():
    with pytest.raises(ConfigError, match=r"serve\.cache\.redis_url is not set"):
        make_cache(CacheConfig(kind="redis"))


def test_make_cache_redis_with_bad_url_names_the_setting():
    pytest.importorskip("redis")
    with pytest.raises(ConfigError, match=r"serve\.cache\.redis_url 'http://x:6379' is not"):
        make_cache(CacheConfig(kind="redis", redis_url="http://x:6379"))


def test_make_cache_redis_without_the_package_says_what_to_install(monkeypatch):
    # None in sys.modules makes `import redis.asyncio` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[redis\]'"):
        make_cache(CacheConfig(kind="redis", redis_url="redis://127.0.0.1:6379/0"))
    # The LRU needs nothing extra.
    assert isinstance(make_cache(CacheConfig(kind="lru")), LruCache)


def test_missing_redis_server_skips_or_fails_under_ci(monkeypatch, tmp_path):
    import redis_server

    monkeypatch.setattr(redis_server, "find_redis_server", lambda: None)
    monkeypatch.delenv("LMFORGE_REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        redis_server.start_redis(tmp_path)
    monkeypatch.setenv("LMFORGE_REQUIRE_REDIS", "1")
    with pytest.raises(pytest.fail.Exception, match="LMFORGE_REQUIRE_REDIS=1"):
        redis_server.start_redis(tmp_path)
