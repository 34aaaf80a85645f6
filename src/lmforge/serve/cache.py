"""The server's prediction cache: text -> prediction, in process (LRU) or shared (Redis).

Keys cover the model name, version and artifact content hash as well as the normalised text,
so promoting a new version or re-registering an artifact can never serve stale predictions.
Values are prediction dicts (`{"label": str, "probs": {label: float}}`) stored as JSON in both
backends, so what comes back is exactly what plain JSON can carry, whichever backend is used.

The cache is an optimisation and must never be the reason a request fails or stalls: the
Redis backend bounds every call by `timeout_s` and degrades to a miss / skipped write on any
error, counting it in `errors` and logging at most one warning per 30 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import unicodedata
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from lmforge.errors import ConfigError

if TYPE_CHECKING:
    from lmforge.config import CacheConfig

log = logging.getLogger("lmforge.serve.cache")

WARN_INTERVAL_S = 30.0
_KEY_SCHEMA = "lmforge-pred-v1"  # bump when key derivation changes, so old entries are ignored


def normalise_text(text: str) -> str:
    """NFC-normalise, strip, and collapse runs of whitespace to one space.

    Two inputs that normalise to the same string share a cache entry.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    # str.split() with no argument splits on every Unicode whitespace run and drops the ends.
    return " ".join(unicodedata.normalize("NFC", text).split())


def cache_key(model: str, version: int, content_hash: str, text: str) -> str:
    """A stable hex digest (sha256) of model, version, artifact content hash and normalised text."""
    # JSON-encoding the tuple makes field boundaries unambiguous ("a", "bc" != "ab", "c").
    payload = json.dumps(
        [_KEY_SCHEMA, str(model), int(version), str(content_hash), normalise_text(text)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _encode(value: dict) -> str:
    # allow_nan=False: NaN/Infinity are not JSON and would not read back in other clients.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class PredictionCache(ABC):
    """Common interface and hit/miss/error counters of every cache backend."""

    kind: str = "abstract"

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.errors = 0

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any lookup."""
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0

    def _count(self, found: list[dict | None]) -> None:
        hits = sum(1 for value in found if value is not None)
        self.hits += hits
        self.misses += len(found) - hits

    @abstractmethod
    async def get_many(self, keys: list[str]) -> list[dict | None]:
        """The cached value for each key, in order; None where missing or expired."""

    @abstractmethod
    async def set_many(self, items: dict[str, dict]) -> None:
        """Store each key -> value with the cache's TTL."""

    async def close(self) -> None:  # noqa: B027 - optional hook; the LRU has nothing to release
        """Release connections; the cache must not be used afterwards."""


def _check_ttl(ttl_s: float) -> float:
    if not ttl_s > 0:
        raise ConfigError(f"serve.cache.ttl_s must be > 0 seconds, got {ttl_s!r}")
    return float(ttl_s)


class LruCache(PredictionCache):
    """In-process LRU with a TTL: one event loop per process, no locking needed."""

    kind = "lru"

    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(
                f"serve.cache.max_entries must be an integer >= 1, got {max_entries!r}"
            )
        self.max_entries = max_entries
        self.ttl_s = _check_ttl(ttl_s)
        self._clock = clock
        # key -> (expires_at, JSON text); JSON so callers can't mutate cached values in place
        # and so the LRU returns exactly what the Redis backend would.
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: list[str]) -> list[dict | None]:
        now = self._clock()
        found: list[dict | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                found.append(None)
            elif entry[0] <= now:
                del self._entries[key]  # expired: drop it now rather than wait for eviction
                found.append(None)
            else:
                self._entries.move_to_end(key)
                found.append(json.loads(entry[1]))
        self._count(found)
        return found

    async def set_many(self, items: dict[str, dict]) -> None:
        # Encode all first so a value that is not JSON leaves the cache untouched.
        encoded = {key: _encode(value) for key, value in items.items()}
        expires_at = self._clock() + self.ttl_s
        for key, text in encoded.items():
            self._entries[key] = (expires_at, text)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _import_redis_asyncio() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise ConfigError(
            "serve.cache.kind is 'redis' but the redis package is not installed: "
            "pip install 'lmforge[redis]' (or set serve.cache.kind to 'lru')"
        ) from exc
    return redis_asyncio


def _redact_url(url: str) -> str:
    """The URL with any password replaced by '***', for log lines."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "<unparsable redis url>"


class RedisCache(PredictionCache):
    """Shared cache in Redis (several workers/replicas see each other's entries).

    Values are JSON (never pickle: a shared store must not be able to run code in us).
    Every call is bounded by `timeout_s`; on any failure it is a miss / skipped write.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: float,
        prefix: str = "lmforge:pred:",
        timeout_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        redis_asyncio = _import_redis_asyncio()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if not timeout_s > 0:
            raise ConfigError(f"RedisCache timeout_s must be > 0 seconds, got {timeout_s!r}")
        self.url = url
        self._safe_url = _redact_url(url)
        self.ttl_s = _check_ttl(ttl_s)
        self.ttl_ms = max(1, round(self.ttl_s * 1000))
        self.prefix = prefix
        self.timeout_s = float(timeout_s)
        self._clock = clock
        self._last_warning: float | None = None
        try:
            # No retries: a retry with backoff would only burn the request's time budget;
            # the next request simply tries again.
            self._client = redis_asyncio.Redis.from_url(
                url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                decode_responses=False,
            )
        except ValueError as exc:
            raise ConfigError(
                f"serve.cache.redis_url {_redact_url(url)!r} is not a Redis URL ({exc}); "
                "use redis://host:port/db, rediss://... or unix:///path/to/socket"
            ) from exc

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # distinct types on 3.10
                reason = f"timed out after {self.timeout_s:g} s"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "Redis cache %s at %s failed (%s); serving without the cache "
                "(errors so far: %d; this warning repeats at most every %.0f s)",
                what,
                self._safe_url,
                reason,
                self.errors,
                WARN_INTERVAL_S,
            )

    async def get_many(self, keys: list[str]) -> list[dict | None]:
        if not keys:
            return []
        try:
            raw = await asyncio.wait_for(
                self._client.mget([self._key(k) for k in keys]), self.timeout_s
            )
        except Exception as exc:  # down, slow, auth, protocol...: all are a miss
            self._failed("read", exc)
            found: list[dict | None] = [None] * len(keys)
        else:
            found = []
            for value in raw:
                if value is None:
                    found.append(None)
                    continue
                try:
                    decoded = json.loads(value)
                    if not isinstance(decoded, dict):
                        raise ValueError(f"expected a JSON object, got {type(decoded).__name__}")
                except ValueError as exc:  # someone else wrote the key: treat as a miss
                    self._failed("decode", exc)
                    decoded = None
                found.append(decoded)
        self._count(found)
        return found

    async def set_many(self, items: dict[str, dict]) -> None:
        if not items:
            return
        # Encode first: a value that is not JSON is a bug in the caller, not a Redis outage.
        encoded = {self._key(k): _encode(v) for k, v in items.items()}
        try:
            await asyncio.wait_for(self._write(encoded), self.timeout_s)
        except Exception as exc:
            self._failed("write", exc)

    async def _write(self, encoded: dict[str, str]) -> None:
        # transaction=False: plain pipelining, one round trip, no MULTI/EXEC overhead.
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in encoded.items():
                pipe.set(key, value, px=self.ttl_ms)
            await pipe.execute()

    async def ping(self) -> bool:
        """True when Redis answers within timeout_s; never raises."""
        try:
            return bool(await asyncio.wait_for(self._client.ping(), self.timeout_s))
        except Exception:
            return False

    async def close(self) -> None:
        try:
            # aclose() arrived in redis-py 5.0.1; close() is its older, deprecated name.
            closer = getattr(self._client, "aclose", None) or self._client.close
            await asyncio.wait_for(closer(), max(self.timeout_s, 1.0))
        except Exception as exc:  # closing a dead connection is not worth a failed shutdown
            log.debug("closing the Redis cache client failed: %s", exc)


def make_cache(cfg: CacheConfig) -> PredictionCache | None:
    """The cache `serve.cache` asks for; None for kind 'none'."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "lru":
        return LruCache(cfg.max_entries, cfg.ttl_s)
    if cfg.kind == "redis":
        if not cfg.redis_url:
            raise ConfigError(
                "serve.cache.kind is 'redis' but serve.cache.redis_url is not set: "
                "set it to e.g. redis://127.0.0.1:6379/0, or use kind 'lru'"
            )
        return RedisCache(cfg.redis_url, cfg.ttl_s)
    raise ConfigError(
        f"serve.cache.kind {cfg.kind!r} is unknown: use one of 'none', 'lru', 'redis'"
    )
