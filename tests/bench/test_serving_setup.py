import argparse
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmforge.bench.serving_setup as setup
from lmforge.bench.capacity import CapacityResult
from lmforge.bench.loadgen import default_texts
from lmforge.bench.openloop import OpenLoopResult
from lmforge.bench.serving_setup import (
    THREAD_ENV_VARS,
    WARMUP_TIMEOUT_S,
    add_capacity_args,
    add_load_rate_args,
    add_model_args,
    add_search_args,
    add_second_version,
    bench_env,
    build_demo_registry,
    capacity_search,
    copy_registry,
    latency_stats,
    load_average,
    load_rate,
    merge_open_loop,
    open_loop_options,
    parse_with_quick,
    prepare_model,
    prepare_registry_copy,
    production_model_dir,
    request_texts,
    search_arm,
    serve_section,
    warm_up,
    write_serve_config,
)
from lmforge.config import ServeConfig, load_config
from lmforge.errors import ConfigError

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _write_shared(folder, english, chinese):
    (folder / "sst2").mkdir(parents=True)
    (folder / "chinese").mkdir(parents=True)
    lines = ["label\tcontent"] + [f"1\t{t}" for t in english]
    (folder / "sst2" / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["label,review"] + [f"1,{t}" for t in chinese]
    (folder / "chinese" / "waimai_10k.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_request_texts_interleaves_real_english_and_chinese(tmp_path):
    _write_shared(tmp_path, ["good film", "  ", "bad film"], ["好吃", "太慢了", "一般"])
    texts, source = request_texts(shared_dir=tmp_path)
    # Blank rows are skipped; pairs stop at the shorter list.
    assert texts == ["good film", "好吃", "bad film", "太慢了"]
    assert "sst2/dev.tsv" in source and "waimai_10k.csv" in source


def test_request_texts_falls_back_to_builtins_without_shared_data(tmp_path):
    texts, source = request_texts(shared_dir=tmp_path / "missing")
    assert texts == default_texts()
    assert "default_texts" in source


def test_request_texts_prefers_an_eval_parquet(tmp_path):
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"text": ["one review", "", "another"]}), path)
    _write_shared(tmp_path / "shared", ["good"], ["好"])
    texts, source = request_texts(path, shared_dir=tmp_path / "shared")
    assert texts == ["one review", "another"]
    assert source == str(path)


def test_build_demo_registry_serves_a_demo_shaped_model(tmp_path):
    from lmforge.serve.backends import load_backend

    texts = default_texts()
    info = build_demo_registry(tmp_path, texts, "tiny")
    assert info["d_model"] == 128 and info["n_layers"] == 2 and info["max_len"] == 128
    assert info["parameters"] > 0
    model_dir = production_model_dir(tmp_path / "registry")
    assert model_dir.is_dir() and (model_dir / "model.safetensors").is_file()
    backend = load_backend(model_dir, "torch", threads=1)
    out = backend.predict(texts[:3])
    assert len(out) == 3
    assert {row["label"] for row in out} <= {"negative", "neutral", "positive"}
    # Seeded: a second build gives the same weights, so runs compare prediction for prediction.
    build_demo_registry(tmp_path / "again", texts, "tiny")
    again = load_backend(production_model_dir(tmp_path / "again" / "registry"), "torch", 1)
    assert again.predict(texts[:3]) == out


def test_serve_config_round_trips_through_the_config_loader(tmp_path):
    path = write_serve_config(
        tmp_path / "cfg" / "serve.yaml",
        batching={"max_batch_size": 8, "max_queue_delay_ms": 0.5},
        backend={"threads": 1},
    )
    serve = load_config(path).serve
    assert serve.cache.kind == "none"  # every request reaches the model
    assert serve.batching.max_batch_size == 8
    assert serve.batching.max_queue_delay_ms == 0.5
    assert serve.batching.max_queue_texts == ServeConfig().batching.max_queue_texts
    assert serve.backend.threads == 1
    assert serve.tracing == ServeConfig().tracing  # tracing keeps lmforge's defaults


def test_serve_config_defaults_and_overriding_the_cache(tmp_path):
    assert load_config(write_serve_config(tmp_path / "a.yaml")).serve.cache.kind == "none"
    section = serve_section(cache={"kind": "lru", "max_entries": 10})
    assert section["cache"] == {"kind": "lru", "max_entries": 10}


def test_serve_config_rejects_a_misspelt_key(tmp_path):
    with pytest.raises(ConfigError, match=r"serve\.batching\.max_batch"):
        write_serve_config(tmp_path / "bad.yaml", batching={"max_batch": 8})
    assert not (tmp_path / "bad.yaml").exists()


def test_bench_env_caps_every_pool():
    env = bench_env(2)
    assert set(env) == set(THREAD_ENV_VARS)
    assert set(env.values()) == {"2"}
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            bench_env(bad)


def test_load_average_is_three_rounded_numbers():
    loads = load_average()
    assert len(loads) == 3
    assert all(x >= 0 and round(x, 2) == x for x in loads)


# -- command-line options ----------------------------------------------------------------------
def test_add_search_args_defaults():
    parser = argparse.ArgumentParser()
    add_search_args(parser, p99_ms=250.0)
    args = parser.parse_args([])
    assert vars(args) == {
        "registry": None,
        "model": None,
        "preset": "tiny",
        "eval": None,
        "p99_ms": 250.0,
        "trial_s": 4.0,
        "warmup_s": 2.0,
        "start_rate": 20.0,
        "max_rate": 20000.0,
        "rel_tolerance": 0.1,
        "max_trials": 12,
        "connections": 64,
        "timeout_s": 2.0,
        "seed": 0,
        "texts_per_request": 1,
        "min_requests": 300,
    }
    args = parser.parse_args(["--registry", "r", "--preset", "small", "--texts-per-request", "4"])
    assert args.registry == Path("r") and args.preset == "small" and args.texts_per_request == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "huge"])


def test_capacity_args_take_per_script_defaults_without_the_request_options():
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_capacity_args(parser, p99_ms=100.0, start_rate=50.0, max_trials=10)
    args = parser.parse_args([])
    assert (args.p99_ms, args.start_rate, args.max_trials) == (100.0, 50.0, 10)
    assert not hasattr(args, "texts_per_request") and not hasattr(args, "min_requests")


def _search_args(**overrides) -> argparse.Namespace:
    """add_search_args' defaults, with a tiny search: a couple of sub-second trials."""
    parser = argparse.ArgumentParser()
    add_search_args(parser, p99_ms=5000.0)  # loose: must pass on a crowded test machine
    args = parser.parse_args([])
    small = {
        "trial_s": 0.4,
        "warmup_s": 0.3,
        "start_rate": 5.0,
        "max_rate": 10.0,
        "max_trials": 2,
        "connections": 2,
        "timeout_s": 5.0,
        "min_requests": 0,
    }
    for key, value in {**small, **overrides}.items():
        setattr(args, key, value)
    return args


def test_open_loop_options_from_the_args():
    args = _search_args(texts_per_request=2, seed=7)
    assert open_loop_options(args) == {
        "connections": 2,
        "timeout_s": 5.0,
        "arrival": "poisson",
        "seed": 7,
        "texts_per_request": 2,
    }
    # Extra keywords win; a script without --texts-per-request sends the generator's default.
    no_tpr = argparse.Namespace(connections=8, timeout_s=1.0, seed=0)
    assert open_loop_options(no_tpr, path="/x", seed=3) == {
        "connections": 8,
        "timeout_s": 1.0,
        "arrival": "poisson",
        "seed": 3,
        "path": "/x",
    }


# -- model and load ----------------------------------------------------------------------------
def test_prepare_model_uses_the_given_registry(tmp_path):
    args = argparse.Namespace(registry=tmp_path / "reg", preset="tiny")
    logged: list[str] = []
    registry, info = prepare_model(args, tmp_path / "tmp", ["a"], log=logged.append)
    assert registry == tmp_path / "reg"
    assert info == {"kind": "registry", "registry": str(tmp_path / "reg")}
    assert logged == [] and not (tmp_path / "tmp").exists()  # nothing built


def test_prepare_model_builds_a_demo_model_without_a_registry(tmp_path, monkeypatch):
    built: list[tuple] = []

    def fake_build(root, texts, preset):
        built.append((root, texts, preset))
        return {"kind": "built", "preset": preset}

    monkeypatch.setattr(setup, "build_demo_registry", fake_build)
    logged: list[str] = []
    args = argparse.Namespace(registry=None, preset="small")
    registry, info = prepare_model(args, tmp_path, ["x", "y"], log=logged.append)
    assert built == [(tmp_path, ["x", "y"], "small")]
    assert registry == tmp_path / "registry" and info == {"kind": "built", "preset": "small"}
    assert "preset small" in logged[0] and "built in" in logged[1]


def _spy_open_loop(monkeypatch) -> list[tuple]:
    """Record every run_open_loop_sync call serving_setup makes, and still make it."""
    calls: list[tuple] = []
    real = setup.run_open_loop_sync

    def spy(url, rate, seconds, texts, **kw):
        calls.append((rate, seconds, kw))
        return real(url, rate, seconds, texts, **kw)

    monkeypatch.setattr(setup, "run_open_loop_sync", spy)
    return calls


def test_warm_up_sends_unrecorded_low_rate_load(live_url, monkeypatch):
    calls = _spy_open_loop(monkeypatch)
    warm_up(live_url, default_texts(), 0.0)  # no warm-up asked: nothing sent
    assert calls == []
    warm_up(live_url, default_texts(), 0.3, connections=2)
    assert calls == [(setup.WARMUP_RATE, 0.3, {"timeout_s": WARMUP_TIMEOUT_S, "connections": 2})]
    warm_up(live_url, default_texts(), 0.3, connections=2, timeout_s=1.0, path="/v1/predict")
    assert calls[1][2]["timeout_s"] == 1.0  # the caller's timeout wins


def test_capacity_search_against_a_live_server(live_url):
    args = _search_args()
    logged: list[str] = []
    found = capacity_search(live_url, default_texts(), args, log=logged.append, settle_s=0.05)
    # 5/s passes, then 10/s (the cap) passes: the whole search is two short trials.
    assert found.rate == 10.0 and found.capped and len(found.trials) == 2
    assert all(passed for _, _, passed in found.trials)
    assert len(logged) == 2 and "achieved" in logged[0]


def test_capacity_search_reads_every_option(monkeypatch):
    seen: dict[str, dict] = {}

    def fake_measure(url, texts, trial_s, **kw):
        seen["measure"] = {"url": url, "trial_s": trial_s, **kw}
        return "measure"

    def fake_find(measure, **kw):
        seen["find"] = {"measure": measure, **kw}
        return "found"

    monkeypatch.setattr(setup, "open_loop_measure", fake_measure)
    monkeypatch.setattr(setup, "find_capacity", fake_find)
    args = _search_args(min_requests=300, texts_per_request=3, confirm_failures=1, p99_ms=250.0)
    assert capacity_search("http://h", ["t"], args, path="/p") == "found"
    measure, find = seen["measure"], seen["find"]
    assert measure["trial_s"] == 0.4 and measure["min_requests"] == 300
    assert measure["texts_per_request"] == 3 and measure["path"] == "/p"
    assert measure["arrival"] == "poisson" and measure["connections"] == 2
    assert find["p99_limit_s"] == 0.25 and find["confirm_failures"] == 1
    assert (find["start_rate"], find["max_rate"], find["max_trials"]) == (5.0, 10.0, 2)
    # A script without --min-requests / --confirm-failures: full trials, no reruns.
    bare = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "min_requests"})
    del bare.confirm_failures
    capacity_search("http://h", ["t"], bare)
    assert seen["measure"]["min_requests"] == 0 and seen["find"]["confirm_failures"] == 0


def test_search_arm_starts_searches_and_reports(live_url, monkeypatch, tmp_path):
    started: list[dict] = []

    @contextmanager
    def fake_server(registry, model=None, config_path=None):
        # The live test server stands in for `lmforge serve`: no child process to start.
        started.append({"registry": registry, "model": model, "config_path": config_path})
        yield SimpleNamespace(url=live_url)

    monkeypatch.setattr(setup, "ServerProcess", fake_server)
    calls = _spy_open_loop(monkeypatch)
    args = _search_args(texts_per_request=2, model="tiny")
    config = write_serve_config(tmp_path / "arm.yaml")
    logged: list[str] = []
    out = search_arm("arm", tmp_path / "reg", config, args, default_texts(), log=logged.append)
    assert started == [{"registry": tmp_path / "reg", "model": "tiny", "config_path": config}]
    assert calls[0][:2] == (setup.WARMUP_RATE, 0.3)  # warm-up first, then the trials
    assert out["requests_per_s"] > 0
    assert out["texts_per_s"] == round(out["requests_per_s"] * 2, 1)
    assert set(out) == {
        "requests_per_s",
        "texts_per_s",
        "capped",
        "lowest_fail",
        "trials",
        "search_s",
        "load_average_before",
        "load_average_after",
    }
    assert len(out["load_average_before"]) == 3 and len(out["trials"]) <= 2
    assert logged[0].startswith("[arm] starting") and logged[-1].startswith("[arm] capacity")


# -- the scripts -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["serve_batching", "serve_mean_latency", "serve_overhead"])
def test_serving_scripts_use_the_shared_setup(name):
    spec = importlib.util.spec_from_file_location(f"bench_setup_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    # One copy of each helper: the script's name is serving_setup's function.
    assert module.request_texts is setup.request_texts
    assert module.prepare_model is setup.prepare_model
    # No bench script imports another one (bench/ is not a package).
    source = (BENCH / f"{name}.py").read_text(encoding="utf-8")
    assert "sys.path.insert" not in source
    assert "from serve_" not in source and "import serve_" not in source


# -- runs that change their registry -----------------------------------------------------------
def test_copy_registry_leaves_the_source_alone(tiny_registry, tmp_path):
    from lmforge.registry import ModelRegistry

    copied, name = copy_registry(tiny_registry, tmp_path / "run" / "registry")
    assert copied == tmp_path / "run" / "registry" and name == "tiny"
    ModelRegistry(copied, create=False).remove_alias("tiny", "production")
    assert ModelRegistry(tiny_registry, create=False).resolve("tiny").version == 1
    with pytest.raises(FileExistsError):  # never merged into an existing folder
        copy_registry(tiny_registry, copied)


def test_prepare_registry_copy_copies_a_given_registry(tiny_registry, tmp_path):
    args = argparse.Namespace(registry=tiny_registry, model="tiny", preset="tiny")
    registry_dir, name, info = prepare_registry_copy(args, tmp_path / "run", ["a"])
    assert registry_dir == tmp_path / "run" / "registry" and registry_dir.is_dir()
    assert name == "tiny"
    assert info == {"kind": "registry", "registry": str(tiny_registry)}


def test_prepare_registry_copy_builds_a_demo_model(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "build_demo_registry", lambda root, texts, preset: {"built": 1})
    args = argparse.Namespace(registry=None, model="ignored", preset="tiny")
    out = prepare_registry_copy(args, tmp_path, ["a"], log=lambda _: None)
    assert out == (tmp_path / "registry", setup.DEMO_MODEL_NAME, {"built": 1})


def test_add_second_version_is_another_init_of_the_same_shape(tiny_registry, tmp_path):
    import torch

    from lmforge.models.export import load_model_dir
    from lmforge.registry import ModelRegistry

    registry_dir, name = copy_registry(tiny_registry, tmp_path / "run" / "registry")
    assert add_second_version(registry_dir, name) == 2
    registry = ModelRegistry(registry_dir, create=False)
    assert registry.resolve(name).version == 1  # production does not move
    second = registry.get(name, 2)
    assert second.tags == {"bench": "candidate", "seed": 1}
    v1, _, cfg1 = load_model_dir(registry.get(name, 1).path, quantization=None)
    v2, _, cfg2 = load_model_dir(second.path, quantization=None)
    assert v2.config == v1.config and cfg2["labels"] == cfg1["labels"]
    w1, w2 = v1.state_dict(), v2.state_dict()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    # Seeded: a third one from the same seed has v2's weights.
    assert add_second_version(registry_dir, name) == 3
    v3, _, _ = load_model_dir(registry.get(name, 3).path, quantization=None)
    assert all(torch.equal(w2[k], t) for k, t in v3.state_dict().items())


# -- load at a share of capacity ---------------------------------------------------------------
def _load_rate_parser(**defaults) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_load_rate_args(parser, **defaults)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true")
    return parser


def test_add_load_rate_args_defaults_and_checks():
    args = _load_rate_parser(load_fraction=0.5, timeout_s=5.0).parse_args([])
    assert vars(args) == {
        "rate": None,
        "load_fraction": 0.5,
        "p99_ms": 100.0,
        "trial_s": 4.0,
        "start_rate": 20.0,
        "max_rate": 20000.0,
        "rel_tolerance": 0.1,
        "max_trials": 12,
        "connections": 64,
        "timeout_s": 5.0,
        "seed": 0,
        "phase_s": 10.0,
        "quick": False,
    }
    parser = _load_rate_parser(load_fraction=0.7)
    assert parser.parse_args(["--rate", "2.5", "--load-fraction", "1"]).rate == 2.5
    for bad in (["--rate", "0"], ["--rate", "inf"], ["--load-fraction", "0"], ["--rate", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_parse_with_quick_keeps_explicit_options():
    quick = {"phase_s": 4.0, "trial_s": 1.5}
    args = parse_with_quick(_load_rate_parser(load_fraction=0.7), ["--trial-s", "3"], quick)
    assert (args.phase_s, args.trial_s) == (10.0, 3.0)  # no --quick: the quick set is unused
    argv = ["--quick", "--trial-s", "3"]
    args = parse_with_quick(_load_rate_parser(load_fraction=0.7), argv, quick)
    assert (args.phase_s, args.trial_s) == (4.0, 3.0)


def test_load_rate_with_a_given_rate_searches_nothing(monkeypatch):
    monkeypatch.setattr(setup, "capacity_search", lambda *a, **k: pytest.fail("searched"))
    args = _load_rate_parser(load_fraction=0.7).parse_args(["--rate", "12"])
    assert load_rate("http://h", ["t"], args) == (None, 12.0)


def test_load_rate_takes_a_share_of_the_capacity_found(monkeypatch):
    found = CapacityResult(rate=123.456, trials=[(123.456, {"p99_ms": 9.0}, True)], capped=True)
    seen: list[argparse.Namespace] = []

    def fake_search(url, texts, args, log):
        seen.append(args)
        return found

    monkeypatch.setattr(setup, "capacity_search", fake_search)
    args = _load_rate_parser(load_fraction=0.5).parse_args([])
    logged: list[str] = []
    capacity, rate = load_rate("http://h", ["t"], args, log=logged.append)
    assert seen == [args]
    assert capacity == {"requests_per_s": 123.5, **found.summary()}
    assert rate == pytest.approx(123.5 * 0.5)  # of the rate as reported
    assert logged == ["capacity 123.5 req/s (first failing rate None)"]
    monkeypatch.setattr(setup, "capacity_search", lambda *a, **k: CapacityResult(rate=0.0))
    with pytest.raises(SystemExit, match=r"no trial met p99 <= 100\.0 ms"):
        load_rate("http://h", ["t"], args, log=logged.append)


# -- results -----------------------------------------------------------------------------------
def test_merge_open_loop_pools_runs():
    a = OpenLoopResult(rate=10.0, duration_s=2.0, scheduled=20, sent=20, ok=19, failed=1)
    a.failures, a.latencies_s, a.max_dispatch_lag_s = {"503": 1}, [0.01, 0.02], 0.004
    a.connections = 8
    b = OpenLoopResult(rate=10.0, duration_s=3.0, scheduled=30, sent=29, ok=28, failed=2)
    b.failures, b.latencies_s, b.late_sends = {"503": 1, "ReadTimeout": 1}, [0.03], 2
    out = merge_open_loop([a, b])
    assert (out.rate, out.duration_s, out.connections) == (10.0, 5.0, 8)
    assert (out.scheduled, out.sent, out.ok, out.failed) == (50, 49, 47, 3)
    assert out.failures == {"503": 2, "ReadTimeout": 1} and out.late_sends == 2
    assert out.latencies_s == [0.01, 0.02, 0.03] and out.max_dispatch_lag_s == 0.004
    assert a.failures == {"503": 1}  # the inputs are left as they were
    with pytest.raises(ValueError):
        merge_open_loop([])


def test_latency_stats():
    assert latency_stats([0.003, 0.001, 0.002]) == {"p50_ms": 2.0, "p99_ms": 2.98, "max_ms": 3.0}
    assert latency_stats([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}
