"""Secrets inside URLs: credentials in the authority and token-like query parameters.

Only the secret part is a span, so the URL stays readable after masking:
`https://[URL_SECRET]@db.example.com/x` and `https://x.com/cb?token=[URL_SECRET]&page=2`.
The whole `user:password` is masked (a user name is personal too); a bare user part is
masked only when it looks like an access token (long, letters and digits), since
`ssh://git@host` names no one.
"""

from __future__ import annotations

import re

Span = tuple[int, int]

# A URL is ASCII without spaces; Chinese text glued after it ends it.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[!-~]+")
_AUTHORITY = re.compile(r"[^/?#]*")  # always matches, possibly empty
# Query or fragment parameters; ";" also catches "&amp;name=" left by HTML escaping. The
# value excludes "[" so that an already masked value is not masked again.
_PARAM = re.compile(r"[?&;#]([A-Za-z][A-Za-z0-9_.-]*)=([A-Za-z0-9._~%+/=:@!$*-]+)")
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

# Whole parameter names (compared lower-case without "_", "-", "."), and last words of
# longer names ("client_secret", "refreshToken", "X-Amz-Signature").
_SECRET_NAMES = frozenset(
    {
        "token",
        "accesstoken",
        "apikey",
        "key",
        "secret",
        "password",
        "passwd",
        "pwd",
        "sig",
        "signature",
        "auth",
        "session",
        "sessionid",
        "sid",
        "jsessionid",
        "phpsessid",
        "code",
        "authcode",
        "authorization",
        "credential",
    }
)
_SECRET_LAST_WORDS = frozenset(
    {
        "token",
        "secret",
        "signature",
        "password",
        "passwd",
        "key",
        "credential",
    }
)


def is_secret_parameter(name: str) -> bool:
    compact = re.sub(r"[_.-]", "", name).lower()
    if compact in _SECRET_NAMES:
        return True
    words = _WORDS.findall(name)
    return bool(words) and words[-1].lower() in _SECRET_LAST_WORDS


def _token_like(user: str) -> bool:
    return len(user) >= 16 and any(c.isdigit() for c in user) and any(c.isalpha() for c in user)


def find_url_secrets(text: str) -> list[Span]:
    if "://" not in text:
        return []
    spans = []
    for url in _URL.finditer(text):
        base = url.start()
        rest = url.group()
        authority_start = rest.index("://") + 3
        authority_end = authority_start + len(_AUTHORITY.match(rest, authority_start)[0])
        at = rest.rfind("@", authority_start, authority_end)
        if at > authority_start:
            user = rest[authority_start:at]
            if ":" in user or _token_like(user):
                spans.append((base + authority_start, base + at))
        for m in _PARAM.finditer(rest):
            if not is_secret_parameter(m.group(1)):
                continue
            value = m.group(2).rstrip(".:!")  # sentence punctuation after the URL
            if value.strip("="):
                spans.append((base + m.start(2), base + m.start(2) + len(value)))
    return spans
