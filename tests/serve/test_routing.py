import random
from collections import Counter

import pytest

from lmforge.serve.routing import (
    RoutingError,
    check_policy_aliases,
    choose_variant,
    parse_policy,
    served_aliases,
)

ALIASES = {"production": 1, "canary": 2, "challenger": 3, "shadow": 4}


def test_default_policy_sends_everything_to_production():
    policy = parse_policy({})
    routes = {choose_variant("m", policy, ALIASES, f"user-{i}").variant for i in range(200)}
    assert routes == {"production"}


def test_canary_gets_its_weight_of_keys_and_keys_are_sticky():
    policy = parse_policy({"canary_weight": 0.2})
    picks = [choose_variant("m", policy, ALIASES, f"user-{i}").variant for i in range(5000)]
    share = picks.count("canary") / len(picks)
    assert 0.18 < share < 0.22
    # The same key lands on the same variant every time (and in every process: the hash is
    # content-based, not Python's salted hash()).
    again = [choose_variant("m", policy, ALIASES, f"user-{i}").variant for i in range(5000)]
    assert again == picks


def test_requests_without_a_key_are_spread_at_random():
    policy = parse_policy({"canary_weight": 0.5})
    rng = random.Random(0)
    picks = Counter(choose_variant("m", policy, ALIASES, None, rng).variant for _ in range(2000))
    assert 900 < picks["canary"] < 1100
    assert not choose_variant("m", policy, ALIASES, None, rng).sticky


def test_ab_split_follows_weights_and_beats_canary():
    policy = parse_policy({"ab": {"production": 3, "challenger": 1}, "canary_weight": 0.5})
    picks = Counter(choose_variant("m", policy, ALIASES, f"u{i}").variant for i in range(8000))
    assert set(picks) == {"production", "challenger"}
    assert 0.22 < picks["challenger"] / 8000 < 0.28


def test_ab_assignment_differs_between_models():
    policy = parse_policy({"ab": {"production": 1, "challenger": 1}})
    a = [choose_variant("m1", policy, ALIASES, f"u{i}").variant for i in range(400)]
    b = [choose_variant("m2", policy, ALIASES, f"u{i}").variant for i in range(400)]
    assert a != b  # a user is not in the same arm of every experiment


def test_missing_canary_alias_falls_back_to_production():
    policy = parse_policy({"canary_weight": 1.0})
    assert choose_variant("m", policy, {"production": 1}, "u").variant == "production"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"canary_weight": 1.5}, "canary_weight"),
        ({"ab": {"production": 1}}, r"'ab'.*at least 2"),
        ({"ab": {"production": 1, "shadow": 1}}, "only receives copies"),
        ({"ab": {"production": 1, "b": 0}}, r"'ab.b'.*greater than 0"),
        ({"ab": {"production": 1, "b": float("inf")}}, r"'ab.b'.*finite"),
        ({"ab": {"production": 1, "../x": 1}}, r"pattern"),
        ({"weights": 1}, "weights"),
    ],
)
def test_bad_policies_name_the_field(raw, needle):
    with pytest.raises(RoutingError, match=needle):
        parse_policy(raw)


def test_policy_must_route_to_existing_aliases():
    with pytest.raises(RoutingError, match=r"alias 'canary'.*promote a version"):
        check_policy_aliases(parse_policy({"canary_weight": 0.1}), {"production": 1})
    check_policy_aliases(parse_policy({"canary_weight": 0.1}), ALIASES)


def test_served_aliases_include_shadow_only_when_enabled():
    assert served_aliases(parse_policy({}), ALIASES) == {"production", "shadow"}
    assert served_aliases(parse_policy({"shadow": False}), ALIASES) == {"production"}
    both = served_aliases(parse_policy({"canary_weight": 0.1}), ALIASES)
    assert both == {"production", "canary", "shadow"}
