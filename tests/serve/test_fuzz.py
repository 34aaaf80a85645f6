"""CI-sized fuzzing of the HTTP API against a real `lmforge serve` process.

1. schemathesis over every operation of /openapi.json (positive and negative data, a small
   example budget, with an admin key so the admin endpoints run too): no 5xx, and responses
   conform to the spec (status codes, content types, response schemas);
2. the hand-made malformed requests of bench/serve_fuzz.py over raw sockets: every error is a
   4xx JSON `{"error": {"code", "message"}}`, never a 5xx.

Both run on one server (one startup): schemathesis first, then its leftovers (aliases, a
routing policy, production moved) are undone through the admin API before the hand-made
cases, which set up and undo any state they need themselves.

Server bugs this fuzzing found are kept as explicit regression cases marked
`xfail(strict=True)` with the bug in the reason; a fix makes them XPASS, which fails the run
until the marker is removed, so they then guard the fix.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from lmforge.bench.server_process import ServerProcess

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve_fuzz.py"


def _load_bench() -> ModuleType:
    """Import bench/serve_fuzz.py by path: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench_serve_fuzz", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


fuzz = _load_bench()

# Placeholder keys give the case names at collection time; the tests rebuild the cases with
# the real keys (they only change header values).
_PLACEHOLDER = "lmf_0123456789abcdef_placeholder"
CASE_NAMES = [c.name for c in fuzz.malformed_cases(_PLACEHOLDER, _PLACEHOLDER)]

# --- server bugs found by this fuzzing (reported, not fixed here) -------------------------------
SURROGATE_TEXT = (
    "server bug: a text holding a lone UTF-16 surrogate (JSON '\\ud800', or the raw UTF-8 "
    "bytes ED A0 80, which json.loads decodes with surrogatepass) is a 500: "
    "serve/cache.py cache_key() does text.encode('utf-8') -> UnicodeEncodeError (with the "
    "cache off, the tokenizer raises TypeError instead)"
)
HUGE_VERSION = (
    "server bug: promote with a version >= 2**63 passes PromoteBody (int, ge=1, no maximum) "
    "and is a 500: registry.get() -> sqlite3 OverflowError 'Python int too large to convert "
    "to SQLite INTEGER'"
)
SURROGATE_ALIAS = (
    "server bug: an A/B routing alias with a lone surrogate is a 500: the RoutingError "
    "message repeats the alias and JSONResponse cannot encode it to UTF-8"
)
INFINITE_WEIGHT = (
    "server bug: an A/B weight of Infinity (JSON 'Infinity', or 1e400) passes RoutingPolicy "
    "and is stored by registry.set_routing; then every JSON rendering of the policy is a 500 "
    "'Out of range float values are not JSON compliant': the PUT's own response, and "
    "GET /v1/models until the policy is replaced"
)
SURROGATE_KEY = (
    "server bug: a predict 'key' with a lone surrogate is answered 200 but its assignment row "
    "cannot be written: ServingStore.flush() raises UnicodeEncodeError and keeps the row, so "
    "every later flush fails (the shadow report and feedback are 500 from then on and no "
    "assignment is stored any more)"
)
KNOWN_BUGS: dict[str, str] = {}  # every bug found so far is fixed; its case now guards it


@dataclass
class Served:
    server: ServerProcess
    admin_key: str
    predict_key: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, tiny_model_dir_b) -> Iterator[Served]:
    """`tiny` v1 (production) and v2 behind a real server, with an admin and a predict key."""
    root = tmp_path_factory.mktemp("fuzz")
    registry, admin_key, predict_key = fuzz.make_registry(
        root / "registry", [tiny_model_dir, tiny_model_dir_b]
    )
    server = ServerProcess(
        registry, host="127.0.0.1", config_path=fuzz.write_serve_config(root / "serve.json")
    )
    server.start()
    try:
        yield Served(server, admin_key, predict_key)
    finally:
        server.stop()


def restore_state(served: Served) -> None:
    """Back to v1 production, no other alias, the default policy: what the cases expect."""
    auth = {"Authorization": f"Bearer {served.admin_key}"}
    admin = f"{served.url}/v1/admin/models/{fuzz.MODEL}"
    with httpx.Client(timeout=30, trust_env=False, headers=auth) as client:
        r = client.post(f"{admin}/promote", json={"version": 1, "alias": "production"})
        assert r.status_code == 200, r.text
        assert client.put(f"{admin}/routing", json={}).status_code == 200
        aliases = client.get(f"{served.url}/v1/models/{fuzz.MODEL}").json()["aliases"]
        for alias in aliases:
            if alias != "production":
                r = client.delete(f"{admin}/aliases/{quote(alias, safe='')}")
                assert r.status_code == 200, r.text
        assert client.get(f"{served.url}/v1/models/{fuzz.MODEL}").json()["aliases"] == {
            "production": 1
        }


@pytest.fixture(scope="module")
def cases(served) -> dict[str, Any]:
    restore_state(served)
    built = fuzz.malformed_cases(served.admin_key, served.predict_key)
    return {c.name: c for c in built}


# --- schemathesis -----------------------------------------------------------------------------
# Unknown request ids make /v1/feedback wait FEEDBACK_WAIT_S (1.5 s) for another worker's
# flush, so it gets fewer examples than the rest.
EXAMPLES = 6
SLOW_OPERATIONS = {"POST /v1/feedback": 2}


def test_schemathesis_every_operation_no_5xx_and_conforms(served):
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    # positive_data_acceptance is left out: the spec cannot say everything the server checks
    # (an A/B split needs two existing aliases, a canary weight needs a canary alias), so
    # schema-valid bodies get a documented 422.
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    auth = {"Authorization": f"Bearer {served.admin_key}"}
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json", timeout=30)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = []
    ran: list[str] = []

    def run_examples(strategy: Any, examples: int, label: str) -> None:
        @hypothesis.given(case=strategy)
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples every run: no flaky CI
            phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
            suppress_health_check=list(HealthCheck),
        )
        def check_one(case: Any) -> None:
            response = case.call(headers=auth, timeout=30)
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks, headers=auth)
            except FailureGroup as exc:
                failures.append(f"{label}: {exc}")

        check_one()

    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        operations.append(label)
        modes = [schemathesis.GenerationMode.POSITIVE]
        # A free-form string path parameter has no invalid value: negative data needs a body
        # or a query (hypothesis would spend seconds proving that it is unsatisfiable).
        if len(operation.body) or len(operation.query):
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            examples = SLOW_OPERATIONS.get(label, EXAMPLES)
            strategy = operation.as_strategy(generation_mode=mode)
            run_examples(strategy, examples, f"{label} ({mode.value})")
            ran.append(f"{label} ({mode.value})")
    assert len(operations) >= 13, operations  # every route of the spec was exercised
    assert sum("(negative)" in r for r in ran) >= 7, ran  # every body and query was mutated
    assert sum(statuses.values()) > 0
    assert not failures, "\n".join(failures[:10])
    assert not [s for s in statuses if s >= 500], statuses


# --- the hand-made malformed requests -------------------------------------------------------------
def test_case_names_are_unique():
    duplicated = [name for name, n in Counter(CASE_NAMES).items() if n > 1]
    assert not duplicated
    assert set(KNOWN_BUGS) <= set(CASE_NAMES), "a KNOWN_BUGS entry names no case"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n]))
        if n in KNOWN_BUGS
        else n
        for n in CASE_NAMES
    ],
)
def test_malformed_request_gets_a_4xx_json_error(name, cases, served):
    # Each case sets up (`before`) and undoes (`after`) the state it needs; only a server bug
    # can leave damage behind, and the cases that do come last in the list.
    case = cases[name]
    server = served.server
    seen = len(server.output_tail(fuzz.LOG_ALL))
    for setup in case.before:
        fuzz.send_raw(server.host, server.port, setup)
    response = fuzz.send_raw(server.host, server.port, case.request, half_close=case.half_close)
    for follow_up in case.after:
        fuzz.send_raw(server.host, server.port, follow_up)
    problems = fuzz.judge(case, response)
    tracebacks = fuzz.error_blocks(server.output_tail(fuzz.LOG_ALL)[seen:])
    assert not problems, (
        f"{problems}\nrequest: {fuzz.show_request(case.request)}\n"
        f"status {response.status}: {response.body[:400]!r}\n" + "\n".join(tracebacks[:2])
    )


def test_server_survives_the_malformed_requests(served, cases):
    # Runs after the parametrized cases (file order): the process is alive and still serves.
    server = served.server
    assert server.proc is not None and server.proc.poll() is None, server.output_tail()
    probe = fuzz.invariant_probe(server.host, server.port, served.admin_key)
    assert probe["GET /v1/models"] == 200
    assert probe["POST /v1/predict"] == 200
