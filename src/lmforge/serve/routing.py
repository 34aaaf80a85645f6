"""Which version answers a request: production, a canary share, or a sticky A/B arm.

A model's traffic policy lives in the registry (so every worker process reads the same one):

    {"canary_weight": 0.1}                          10 % of traffic to the `canary` alias
    {"ab": {"production": 1, "challenger": 1}}      a 50/50 A/B test between two aliases
    {"shadow": false}                               stop mirroring to the `shadow` alias

Assignment hashes the client's routing key (body field `key` or header `X-Routing-Key`), so a
user keeps seeing the same arm across requests and workers; requests without a key are spread
at random. The A/B split, when set, takes precedence over the canary weight. The shadow alias is
never chosen here: it only receives copies (see `serve.shadow`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from lmforge.errors import LmforgeError

PRODUCTION = "production"
CANARY = "canary"
SHADOW = "shadow"
_SCALE = float(1 << 64)


Alias = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Weight = Annotated[float, Field(gt=0.0, le=1e6, allow_inf_nan=False)]


class RoutingError(LmforgeError):
    """A traffic policy that cannot be applied (unknown alias, bad weight)."""


class RoutingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    canary_weight: float = Field(0.0, ge=0.0, le=1.0, description="Share sent to `canary`.")
    ab: dict[Alias, Weight] | None = Field(
        None,
        min_length=2,
        description="Alias -> weight of a sticky A/B split (at least two arms; weights are "
        "normalised).",
    )
    shadow: bool = Field(True, description="Mirror requests to the `shadow` alias if present.")

    @field_validator("ab")
    @classmethod
    def _check_ab(cls, ab: dict[str, float] | None) -> dict[str, float] | None:
        if ab is None:
            return None
        if SHADOW in ab:
            raise ValueError("the shadow alias only receives copies; it cannot be an A/B arm")
        return ab


def parse_policy(raw: dict[str, Any] | None) -> RoutingPolicy:
    """Validate a stored or posted policy; the error names the field and the rule."""
    try:
        return RoutingPolicy.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        raise RoutingError(
            f"routing policy field {where!r}: {first['msg']} "
            '(example: {"canary_weight": 0.1} or {"ab": {"production": 1, "challenger": 1}})'
        ) from None


def check_policy_aliases(policy: RoutingPolicy, aliases: dict[str, int]) -> None:
    """Refuse a policy that routes to an alias the model does not have."""
    wanted = list(policy.ab or {})
    if policy.canary_weight > 0 and not policy.ab:
        wanted.append(CANARY)
    missing = [a for a in wanted if a not in aliases]
    if missing:
        have = ", ".join(sorted(aliases)) or "none"
        raise RoutingError(
            f"the policy routes to alias {missing[0]!r}, which the model lacks (aliases: {have}); "
            f"promote a version to it first: lmforge registry promote NAME VERSION --alias "
            f"{missing[0]}"
        )


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) for a key: the same in every process and run."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class Route:
    """The routing decision for one request: which alias answers, and whether it is sticky."""

    variant: str
    sticky: bool


def choose_variant(
    model: str,
    policy: RoutingPolicy,
    aliases: dict[str, int],
    key: str | None,
    rng: random.Random | None = None,
) -> Route:
    """Pick the alias that answers. `aliases` holds the model's aliases that are loaded."""
    sticky = key is not None

    def draw(salt: str) -> float:
        if key is None:
            return (rng or random).random()
        return unit_hash(model, salt, key)

    if policy.ab:
        arms = [(alias, w) for alias, w in sorted(policy.ab.items()) if alias in aliases]
        if arms:
            total = sum(w for _, w in arms)
            point = draw("ab") * total
            for alias, weight in arms:
                point -= weight
                if point < 0:
                    return Route(alias, sticky)
            return Route(arms[-1][0], sticky)
    if policy.canary_weight > 0 and CANARY in aliases and draw("canary") < policy.canary_weight:
        return Route(CANARY, sticky)
    return Route(PRODUCTION, sticky)


def served_aliases(policy: RoutingPolicy, aliases: dict[str, int]) -> set[str]:
    """Aliases whose versions must be loaded to serve this policy (shadow included)."""
    needed = {PRODUCTION} & set(aliases)
    needed |= {a for a in (policy.ab or {}) if a in aliases}
    if policy.canary_weight > 0 and CANARY in aliases:
        needed.add(CANARY)
    if policy.shadow and SHADOW in aliases:
        needed.add(SHADOW)
    return needed
