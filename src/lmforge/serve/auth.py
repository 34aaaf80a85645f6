"""API keys (stored hashed) and per-key rate limits for the HTTP server.

A key is shown to its owner once, as `lmf_<key_id>_<secret>`. Only the key id, its role and
limits, and sha256(secret) are written to `REGISTRY/auth.sqlite`, so a copied database (or a
backup) cannot be used to call the server.

Every worker process opens its own `KeyStore` on the same file: a key created or revoked by
`lmforge keys` is seen by all of them, at the latest `cache_ttl_s` later.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

ROLES = ("predict", "admin")  # admin may also predict
KEY_PREFIX = "lmf_"
DB_NAME = "auth.sqlite"
# 8 random bytes as hex: no "_" inside, so "lmf_<id>_<secret>" splits unambiguously even though
# a urlsafe secret may itself contain "_".
_KEY_ID = re.compile(r"[0-9a-f]{16}")
# token_urlsafe(32) is 43 characters; anything much longer is not ours and is refused before
# hashing, so a megabyte header costs nothing.
_MAX_PRESENTED = 128
_MAX_NAME = 100
_MAX_CACHED = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    rate REAL,
    burst INTEGER,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
_COLUMNS = "key_id, name, role, rate, burst, created_at, revoked_at"


class AuthError(LmforgeError):
    """A bad API-key request: unknown role, bad limit, unknown key id."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    role: str
    rate: float | None  # requests/s; None: the server's default
    burst: int | None  # None: the server's default
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, role: str) -> bool:
        """Whether this key may call endpoints that need `role` (admin may also predict)."""
        return self.role == role or self.role == "admin"


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, name, role, rate, burst, created_at, revoked_at = row
    return ApiKey(
        key_id=str(key_id),
        name=str(name),
        role=str(role),
        rate=None if rate is None else float(rate),
        burst=None if burst is None else int(burst),
        created_at=float(created_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
    )


def _hash_secret(secret: str) -> str:
    # A plain sha256 is enough here, unlike for passwords: the secret is 256 random bits, so
    # there is no dictionary to try and brute force is 2**256 hashes however fast each one is.
    # Slow hashes (bcrypt, scrypt) only help low-entropy secrets, and would cost milliseconds
    # on every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_limits(rate: float | None, burst: int | None) -> None:
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float))
        or not math.isfinite(rate)
        or rate <= 0
    ):
        raise AuthError(
            f"rate {rate!r} is not a positive number of requests per second; "
            "pass e.g. --rate 10, or leave it out to use serve.auth.default_rate"
        )
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise AuthError(
            f"burst {burst!r} is not a whole number >= 1; pass e.g. --burst 20, "
            "or leave it out to use serve.auth.default_burst"
        )


class KeyStore:
    """API keys in `registry_dir/auth.sqlite`, with a short in-memory cache for `verify`."""

    def __init__(self, registry_dir: str | Path, cache_ttl_s: float = 1.0) -> None:
        if not isinstance(cache_ttl_s, (int, float)) or not cache_ttl_s >= 0:
            raise AuthError(f"cache_ttl_s {cache_ttl_s!r} must be a number >= 0 (0: no cache)")
        self.root = Path(registry_dir).resolve()
        self.path = self.root / DB_NAME
        self.cache_ttl_s = float(cache_ttl_s)
        # key_id -> (expires_at, stored hash or None when unknown, key or None).
        # Unknown ids are cached too, so a client trying random ids cannot make every request
        # hit SQLite; the size bound keeps that from growing memory.
        self._cache: OrderedDict[str, tuple[float, str | None, ApiKey | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._schema_ready = False

    # --- storage -----------------------------------------------------------------------------

    @contextmanager
    def _connect(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection, or None when the file does not exist and `create` is False.

        Readers never create the file, so a server or `keys list` pointed at the wrong folder
        leaves nothing behind.
        """
        if not self.path.exists():
            if not create:
                yield None
                return
            self.root.mkdir(parents=True, exist_ok=True)
            # Owner-only: the file holds no secrets, but key names and roles are nobody's
            # business; opened with O_CREAT first so it is never briefly world-readable.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            with conn:
                if not self._schema_ready:
                    conn.executescript(SCHEMA)
                    self._schema_ready = True
                yield conn
        finally:
            conn.close()

    def create(
        self,
        name: str,
        role: str = "predict",
        rate: float | None = None,
        burst: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key; returns it and its plaintext, which exists nowhere else afterwards."""
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
            raise AuthError(
                f"key name {name!r} must be 1 to {_MAX_NAME} characters, "
                "e.g. the team or service that will use it"
            )
        if role not in ROLES:
            raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}; pick one of those")
        _check_limits(rate, burst)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._connect(create=True) as conn:
            assert conn is not None
            while True:  # a 64-bit id collision is astronomically rare, but costs one retry
                key_id = secrets.token_hex(8)
                try:
                    conn.execute(
                        f"INSERT INTO api_keys ({_COLUMNS}, secret_sha256) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            key_id,
                            name.strip(),
                            role,
                            None if rate is None else float(rate),
                            burst,
                            now,
                            None,
                            _hash_secret(secret),
                        ),
                    )
                    break
                except sqlite3.IntegrityError:
                    continue
        key = ApiKey(
            key_id, name.strip(), role, None if rate is None else float(rate), burst, now, None
        )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def _lookup(self, key_id: str) -> tuple[str | None, ApiKey | None]:
        with self._connect(create=False) as conn:
            if conn is None:
                return None, None
            row = conn.execute(
                f"SELECT {_COLUMNS}, secret_sha256 FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        if row is None:
            return None, None
        return str(row[-1]), _row_to_key(row[:-1])

    def verify(self, presented: str) -> ApiKey | None:
        """The active key `presented` belongs to, or None (unknown, malformed, revoked)."""
        if not isinstance(presented, str) or len(presented) > _MAX_PRESENTED:
            return None
        if not presented.startswith(KEY_PREFIX):
            return None
        key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
        if not sep or not secret or not _KEY_ID.fullmatch(key_id):
            return None

        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key_id)
            else:
                hit = None
        if hit is not None:
            stored, key = hit[1], hit[2]
        else:
            stored, key = self._lookup(key_id)
            if self.cache_ttl_s > 0:
                with self._lock:
                    self._cache[key_id] = (now + self.cache_ttl_s, stored, key)
                    self._cache.move_to_end(key_id)
                    while len(self._cache) > _MAX_CACHED:
                        self._cache.popitem(last=False)

        if stored is None or key is None:
            # Hash anyway so an unknown id takes as long as a wrong secret.
            hmac.compare_digest(_hash_secret(secret), "0" * 64)
            return None
        if not hmac.compare_digest(_hash_secret(secret), stored):
            return None
        return key if key.active else None

    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first. Never returns hashes."""
        with self._connect(create=False) as conn:
            if conn is None:
                return []
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id"
            ).fetchall()
        return [_row_to_key(r) for r in rows]

    def get(self, key_id: str) -> ApiKey:
        """One key by id (revoked or not); an unknown id raises AuthError."""
        _, key = self._lookup(key_id) if isinstance(key_id, str) else (None, None)
        if key is None:
            raise AuthError(
                f"no API key with id {key_id!r} in {self.path}; "
                "see the ids with `lmforge keys list` (check --registry too)"
            )
        return key

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key for good; revoking it again keeps the first revocation time."""
        key = self.get(key_id)
        if key.active:
            now = time.time()
            with self._connect(create=False) as conn:
                assert conn is not None
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                    (now, key_id),
                )
            key = self.get(key_id)
        with self._lock:  # this process stops accepting it at once; others within the TTL
            self._cache.pop(key_id, None)
        return key

    def count_active(self) -> int:
        with self._connect(create=False) as conn:
            if conn is None:
                return 0
            row = conn.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()
        return int(row[0])


def presented_key(headers: Mapping[str, str] | builtins.list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: `Authorization: Bearer X` first, else `X-API-Key: X`.

    Takes a mapping (Starlette headers, a dict) or raw ASGI `scope["headers"]` pairs.
    """
    pairs: Iterator[tuple[str, str]]
    if isinstance(headers, Mapping):
        pairs = ((str(k), str(v)) for k, v in headers.items())
    else:
        pairs = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
    bearer: str | None = None
    api_key: str | None = None
    for name, value in pairs:
        name = name.lower()
        if name == "authorization" and bearer is None:
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == "x-api-key" and api_key is None and value.strip():
            api_key = value.strip()
    return bearer if bearer is not None else api_key


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second; starts full."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        _check_limits(rate, burst)
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)  # a clock that steps back must not drain tokens
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._last = now

    def take(self, n: float = 1.0) -> float:
        """0.0 if `n` tokens were taken, else the seconds until there are enough (none taken)."""
        if not 0 <= n <= self.burst:  # also refuses NaN
            raise AuthError(f"cannot take {n!r} tokens from a bucket that holds 0 to {self.burst}")
        self._refill()
        # The tolerance absorbs float rounding: a client that waits exactly the retry-after it
        # was told must get through, not be told to wait another 1e-16 s.
        if self._tokens >= n - 1e-9:
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return (n - self._tokens) / self.rate


class RateLimiter:
    """One token bucket per API key (or per client address when there is no key)."""

    def __init__(
        self,
        default_rate: float,
        default_burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        _check_limits(default_rate, default_burst)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise AuthError(f"max_keys {max_keys!r} must be a whole number >= 1")
        self.default_rate = float(default_rate)
        self.default_burst = int(default_burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: ApiKey | None, client: str) -> float:
        """0.0 if the request may go ahead, else the seconds to wait (for `Retry-After`)."""
        if key is not None:
            ident = f"key:{key.key_id}"
            rate = key.rate if key.rate is not None else self.default_rate
            burst = key.burst if key.burst is not None else self.default_burst
        else:
            ident = f"client:{client}"
            rate, burst = self.default_rate, self.default_burst
        with self._lock:
            bucket = self._buckets.get(ident)
            if bucket is None or bucket.rate != rate or bucket.burst != burst:
                bucket = TokenBucket(rate, burst, clock=self._clock)
                self._buckets[ident] = bucket
            self._buckets.move_to_end(ident)
            # Dropping the least recently used bucket only forgives whoever has been quiet the
            # longest (it comes back full); a flood of new addresses cannot grow memory.
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return bucket.take()
