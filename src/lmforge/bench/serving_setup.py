"""Shared setup for the serving benchmarks: request texts, a demo-shaped model, a serve config.

Every serving benchmark needs the same three things, built the same way so their numbers
compare:

- `request_texts`: what the requests carry. Real reviews (SST-2 dev + waimai_10k, English and
  Chinese interleaved) from the shared data folder when it is there, else an eval parquet
  given explicitly, else the built-in `default_texts()`.
- `build_demo_registry`: a registry holding a randomly initialised `EncoderClassifier` with
  the shape of `lmforge demo`'s model as model "demo" (alias production). Serving cost depends
  on the shape and the token counts, not on what was learned, so no training is needed.
- `write_serve_config`: a YAML run config whose `serve:` section turns the prediction cache
  off (each request must reach the model) and sets whatever the benchmark varies.

`bench_env(threads)` gives the environment variables that cap every thread pool a server
process may start, so arms given the same thread count really use the same parallelism.

The capacity-search plumbing the scripts share lives here too, so every script searches the
same way:

- `add_model_args` / `add_capacity_args` / `add_search_args`: the common command-line options
  (which model, which texts; the search and its open-loop load);
- `prepare_model`: the registry from --registry, or a demo-shaped model built in a temp folder;
- `warm_up`, `load_average`, `open_loop_options`;
- `capacity_search`: one `find_capacity` run against a running server, settings from the
  options; `search_arm`: start a server with a config, search it, stop it.

For benchmarks that change their registry (move aliases, add versions) and load the server at
a share of its capacity:

- `prepare_registry_copy` / `copy_registry`: a private copy of --registry, or a built model;
- `add_second_version`: a second random init of production's shape, as the next version;
- `add_load_rate_args`, `parse_with_quick`, `load_rate`: --rate or --load-fraction x capacity;
- `merge_open_loop`, `latency_stats`: pooling runs, p50/p99/max of a set of latencies.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lmforge.bench.capacity import CapacityResult, find_capacity, open_loop_measure, stderr_log
from lmforge.bench.loadgen import default_texts, load_eval_texts
from lmforge.bench.openloop import OpenLoopResult, run_open_loop_sync
from lmforge.bench.server_process import ServerProcess
from lmforge.bench.stats import percentile
from lmforge.errors import ConfigError

REAL_TEXTS_PER_SET = 1000
SHARED_DATA_ENV = "LMFORGE_SHARED_DATA"
SST2_FILE = Path("sst2") / "dev.tsv"
WAIMAI_FILE = Path("chinese") / "waimai_10k.csv"
DEMO_MODEL_NAME = "demo"
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",
)
WARMUP_RATE = 20.0  # req/s: low enough for any server, enough to open the connections
WARMUP_TIMEOUT_S = 5.0  # first calls (allocations) may be slow; the warm-up is not recorded
START_WARMUP_S = 2.0  # warm-up of a fresh server before its first measured load


def shared_data_dir() -> Path | None:
    """The shared data folder (`../shared/data` next to the checkout), if there is one.

    $LMFORGE_SHARED_DATA wins; then the folder next to the current directory (benchmarks run
    from the repository root); then the one next to this source tree (an editable install).
    """
    env = os.environ.get(SHARED_DATA_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path.cwd().parent / "shared" / "data")
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def _read_column(path: Path, column: str, delimiter: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter=delimiter)
        texts = []
        for row in rows:
            text = row.get(column) or ""
            if text.strip():
                texts.append(text)
            if len(texts) >= REAL_TEXTS_PER_SET:  # bounded: the files hold thousands of rows
                break
    return texts


def request_texts(
    eval_path: Path | None = None, shared_dir: Path | None = None
) -> tuple[list[str], str]:
    """The texts requests carry, and where they came from.

    `eval_path` (a parquet with a `text` column) wins. Otherwise the first 1000 non-empty
    SST-2 dev sentences and waimai_10k reviews, interleaved (en, zh, en, ...), when both files
    are in `shared_dir` (default: `shared_data_dir()`); else the built-in texts.
    """
    if eval_path is not None:
        return load_eval_texts(eval_path), str(eval_path)
    folder = shared_dir if shared_dir is not None else shared_data_dir()
    if folder is not None and (folder / SST2_FILE).is_file() and (folder / WAIMAI_FILE).is_file():
        english = _read_column(folder / SST2_FILE, "content", "\t")
        chinese = _read_column(folder / WAIMAI_FILE, "review", ",")
        mixed = [t for pair in zip(english, chinese, strict=False) for t in pair]
        if mixed:
            return mixed, f"shared/data: {SST2_FILE.as_posix()} + {WAIMAI_FILE.as_posix()}"
    return default_texts(), "lmforge.bench.loadgen.default_texts()"


def build_demo_registry(root: Path, texts: list[str], preset: str = "tiny") -> dict[str, Any]:
    """Register a demo-shaped, randomly initialised classifier as `demo` (production).

    Writes the model folder to ROOT/model and the registry to ROOT/registry; returns what was
    built (shape, parameter count) for the benchmark's report. The tokenizer is trained on
    `texts`, so requests carrying them tokenise as a real deployment's would.
    """
    import torch

    from lmforge.demo.reviews import LABELS
    from lmforge.models.encoder import EncoderClassifier, encoder_config
    from lmforge.models.export import save_model_dir
    from lmforge.registry import ModelRegistry
    from lmforge.text.tokenizer import train_tokenizer

    root = Path(root)
    tokenizer = train_tokenizer(texts, vocab_size=8000, min_frequency=1)
    torch.manual_seed(0)  # the same weights every run, so predictions can be compared
    cfg = encoder_config(preset, tokenizer.get_vocab_size(), len(LABELS))
    model = EncoderClassifier(cfg).eval()
    model_dir = save_model_dir(root / "model", model, tokenizer, list(LABELS))
    ModelRegistry(root / "registry").register(
        DEMO_MODEL_NAME, model_dir, metrics={}, alias="production"
    )
    return {
        "kind": "built",
        "preset": preset,
        "weights": "random init (seed 0)",
        "vocab_size": tokenizer.get_vocab_size(),
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "d_ff": cfg.d_ff,
        "max_len": cfg.max_len,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def production_model_dir(registry_dir: Path, model: str | None = None) -> Path:
    """The folder of the model version a server on `registry_dir` serves by default."""
    from lmforge.registry import ModelRegistry

    return ModelRegistry(registry_dir, create=False).resolve(model, "production").path


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, section by section (a nested dict merges, anything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def serve_section(**serve_overrides: Any) -> dict[str, Any]:
    """The `serve:` mapping a benchmark writes: cache off, then `serve_overrides` merged in.

    Tracing, batching and the rest keep lmforge's defaults unless overridden, e.g.
    `serve_section(batching={"max_batch_size": 1}, backend={"threads": 1})`. Validated here,
    so a misspelt key fails before a server is started with it.
    """
    from pydantic import ValidationError

    from lmforge.config import ServeConfig

    section = _merge({"cache": {"kind": "none"}}, serve_overrides)
    try:
        ServeConfig.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"serve.{where}: {first['msg']} (in the benchmark's serve config)"
        ) from None
    return section


def write_serve_config(path: Path, **serve_overrides: Any) -> Path:
    """Write a run config holding only a `serve:` section (see `serve_section`); its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"serve": serve_section(**serve_overrides)}, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def bench_env(threads: int) -> dict[str, str]:
    """Environment variables capping OpenMP/MKL/BLAS and Rayon (the tokenizer) pools.

    Apply them before torch is imported (`os.environ.update(...)`, or a child's env): torch
    sizes some pools at import. `torch.set_num_threads` in the server still sets intra-op
    threads; these keep libraries below torch from starting a pool per core.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r}: use a positive whole number, e.g. 1")
    return {name: str(threads) for name in THREAD_ENV_VARS}


def load_average() -> list[float]:
    """The 1/5/15-minute load averages: a machine busy with other work shows up here."""
    return [round(x, 2) for x in os.getloadavg()]


# --- command-line options ----------------------------------------------------------------------


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--registry, --model, --preset, --eval: what serves and what the requests carry."""
    parser.add_argument("--registry", type=Path, help="serve this registry's production model")
    parser.add_argument("--model", help="model name in --registry (default: the only one)")
    parser.add_argument(
        "--preset", default="tiny", choices=["tiny", "small"], help="shape of the built model"
    )
    parser.add_argument("--eval", type=Path, help="parquet with a `text` column to send")


def add_capacity_args(
    parser: argparse.ArgumentParser,
    p99_ms: float,
    *,
    start_rate: float = 20.0,
    max_trials: int = 12,
) -> None:
    """The capacity search's options and its open-loop load's (see `capacity_search`).

    The defaults that differ between scripts are parameters, so each script keeps its own.
    """
    parser.add_argument("--p99-ms", type=float, default=p99_ms, help="latency objective")
    parser.add_argument("--trial-s", type=float, default=4.0, help="seconds per load trial")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="unrecorded load first")
    parser.add_argument("--start-rate", type=float, default=start_rate)
    parser.add_argument("--max-rate", type=float, default=20000.0)
    parser.add_argument("--rel-tolerance", type=float, default=0.1)
    parser.add_argument("--max-trials", type=int, default=max_trials, help="per capacity search")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-request timeout")
    parser.add_argument("--seed", type=int, default=0, help="Poisson arrivals seed")


def add_search_args(parser: argparse.ArgumentParser, p99_ms: float) -> None:
    """Model options, capacity options, --texts-per-request and --min-requests."""
    add_model_args(parser)
    add_capacity_args(parser, p99_ms)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument(
        "--min-requests",
        type=int,
        default=300,
        help="lengthen low-rate trials to hold this many requests (up to 3x --trial-s)",
    )


# --- model and load ----------------------------------------------------------------------------


def prepare_model(
    args: argparse.Namespace,
    tmp: Path,
    texts: list[str],
    log: Callable[[str], None] = stderr_log,
) -> tuple[Path, dict[str, Any]]:
    """The registry to serve and what it holds: `args.registry`, else a demo model in `tmp`.

    `args` needs `registry` and `preset` (see `add_model_args`); the built model's tokenizer
    is trained on `texts`.
    """
    if args.registry is not None:
        return Path(args.registry), {"kind": "registry", "registry": str(args.registry)}
    log(f"building a demo-shaped model (preset {args.preset}) ...")
    began = time.perf_counter()
    info = build_demo_registry(Path(tmp), texts, args.preset)
    log(f"  built in {time.perf_counter() - began:.1f} s: {info}")
    return Path(tmp) / "registry", info


def open_loop_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for `run_open_loop` from the options (`extra` wins).

    Poisson arrivals always; --texts-per-request only where the script has it, so a script
    without it sends one text per request.
    """
    options: dict[str, Any] = {
        "connections": args.connections,
        "timeout_s": args.timeout_s,
        "arrival": "poisson",
        "seed": args.seed,
    }
    if getattr(args, "texts_per_request", None) is not None:
        options["texts_per_request"] = args.texts_per_request
    options.update(extra)
    return options


def warm_up(url: str, texts: list[str], seconds: float, **open_loop_kw: Any) -> None:
    """Low-rate load, not recorded: opens the generator's connections, first-call paths.

    `open_loop_kw` goes to `run_open_loop` (e.g. `connections`, `path`); the timeout defaults
    to a lenient WARMUP_TIMEOUT_S.
    """
    if seconds > 0:
        kw = {"timeout_s": WARMUP_TIMEOUT_S, **open_loop_kw}
        run_open_loop_sync(url, WARMUP_RATE, seconds, texts, **kw)


def capacity_search(
    url: str,
    texts: list[str],
    args: argparse.Namespace,
    *,
    log: Callable[[str], None] = stderr_log,
    **measure_kw: Any,
) -> CapacityResult:
    """`find_capacity` against the server at `url`, every setting from the options.

    Uses `add_capacity_args`' options; --min-requests and --confirm-failures where the script
    has them (else 0: trials of --trial-s, no reruns). `measure_kw` goes to
    `open_loop_measure` over `open_loop_options(args)` (e.g. `path`, `settle_s`). No warm-up:
    callers warm up first (`warm_up`).
    """
    options = {**open_loop_options(args), **measure_kw}
    measure = open_loop_measure(
        url,
        texts,
        args.trial_s,
        min_requests=getattr(args, "min_requests", 0),
        log=log,
        **options,
    )
    return find_capacity(
        measure,
        p99_limit_s=args.p99_ms / 1000.0,
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        rel_tolerance=args.rel_tolerance,
        max_trials=args.max_trials,
        confirm_failures=getattr(args, "confirm_failures", 0),
    )


def search_arm(
    name: str,
    registry: Path,
    config_path: Path,
    args: argparse.Namespace,
    texts: list[str],
    log: Callable[[str], None] = stderr_log,
) -> dict[str, Any]:
    """Start `lmforge serve` with `config_path`, warm it up, find its capacity, stop it.

    Returns the capacity (requests and texts per second), the search's bracket and trials,
    its duration and the load averages around it. `args` as for `capacity_search`, plus
    `model` and `warmup_s`.
    """
    log(f"[{name}] starting the server ({Path(config_path).name}) ...")
    with ServerProcess(registry, model=args.model, config_path=config_path) as server:
        warm_up(server.url, texts, args.warmup_s, connections=args.connections)
        load_before = load_average()
        began = time.perf_counter()
        found = capacity_search(server.url, texts, args, log=log)
        log(f"[{name}] capacity {found.rate:.1f} req/s (first failing rate {found.lowest_fail})")
        return {
            "requests_per_s": round(found.rate, 1),
            "texts_per_s": round(found.rate * getattr(args, "texts_per_request", 1), 1),
            **{k: v for k, v in found.summary().items() if k != "rate"},
            "search_s": round(time.perf_counter() - began, 1),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }


# --- runs that change their registry, at a share of capacity -----------------------------------


def copy_registry(source: Path, target: Path, model: str | None = None) -> tuple[Path, str]:
    """Copy the registry at `source` to `target` (which must not exist yet).

    Returns the copy and the name of the model to serve there (`model`, else the only one),
    checked to have a production version. Benchmarks that move aliases, register versions or
    let the server write its serving store work on a copy: the user's registry is never touched.
    """
    from lmforge.registry import ModelRegistry

    copied = Path(shutil.copytree(source, target))
    name = ModelRegistry(copied, create=False).resolve(model, "production").name
    return copied, name


def prepare_registry_copy(
    args: argparse.Namespace,
    tmp: Path,
    texts: list[str],
    log: Callable[[str], None] = stderr_log,
) -> tuple[Path, str, dict[str, Any]]:
    """A registry this run may change, the model name to serve, and what it holds.

    A copy of `args.registry` in TMP/registry (`copy_registry`), else a demo-shaped model built
    there (`prepare_model`). `args` needs `registry`, `model` and `preset` (`add_model_args`).
    """
    source, info = prepare_model(args, tmp, texts, log=log)
    if args.registry is None:  # built in tmp for this run: already private
        return source, DEMO_MODEL_NAME, info
    registry_dir, name = copy_registry(source, Path(tmp) / "registry", args.model)
    return registry_dir, name, info


def add_second_version(registry_dir: Path, name: str, seed: int = 1) -> int:
    """Register a random init (`seed`) of the production model's shape as `name`'s next version.

    Same tokenizer, labels and shape, other weights: a candidate that costs what production
    costs but answers differently, so a switch to it is visible. Its model folder is saved
    next to the registry (the run's temp folder). Returns the new version number.
    """
    import torch

    from lmforge.models.encoder import EncoderClassifier
    from lmforge.models.export import load_model_dir, save_model_dir
    from lmforge.registry import ModelRegistry

    registry_dir = Path(registry_dir)
    registry = ModelRegistry(registry_dir, create=False)
    production = registry.resolve(name, "production")
    model, tokenizer, config = load_model_dir(production.path, quantization=None)
    torch.manual_seed(seed)  # reproducible weights, unlike production's
    fresh = EncoderClassifier(model.config).eval()
    folder = save_model_dir(
        registry_dir.parent / f"candidate-seed{seed}", fresh, tokenizer, list(config["labels"])
    )
    tags = {"bench": "candidate", "seed": seed}
    return registry.register(name, folder, metrics={}, tags=tags).version


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: use a positive number")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r}: use a number in (0, 1], e.g. 0.7")
    return value


def add_load_rate_args(
    parser: argparse.ArgumentParser,
    *,
    load_fraction: float,
    p99_ms: float = 100.0,
    timeout_s: float = 2.0,
) -> None:
    """--rate and --load-fraction, and the options of the capacity search that sets the rate.

    The search options are `add_capacity_args`' without --warmup-s: the scripts using this
    give --warmup-s a meaning of their own (or none). Per-script defaults are parameters.
    """
    parser.add_argument(
        "--rate",
        type=positive_number,
        help="load rate in req/s; skips the capacity search (default: a share of capacity)",
    )
    parser.add_argument("--load-fraction", type=fraction, default=load_fraction, help="of capacity")
    parser.add_argument("--p99-ms", type=float, default=p99_ms, help="capacity objective")
    parser.add_argument("--trial-s", type=float, default=4.0, help="seconds per search trial")
    parser.add_argument("--start-rate", type=float, default=20.0)
    parser.add_argument("--max-rate", type=float, default=20000.0)
    parser.add_argument("--rel-tolerance", type=float, default=0.1)
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=timeout_s, help="per-request timeout")
    parser.add_argument("--seed", type=int, default=0, help="Poisson arrivals seed")


def parse_with_quick(
    parser: argparse.ArgumentParser, argv: list[str] | None, quick: dict[str, Any]
) -> argparse.Namespace:
    """Parse `argv`; with --quick, parse again over the `quick` defaults.

    A second parse rather than overwriting values, so options given on the command line keep
    theirs. `parser` must have a `--quick` flag.
    """
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def load_rate(
    url: str,
    texts: list[str],
    args: argparse.Namespace,
    *,
    log: Callable[[str], None] = stderr_log,
) -> tuple[dict[str, Any] | None, float]:
    """The rate to load at: --rate when given, else --load-fraction x the capacity found.

    The capacity (None with --rate) is `{"requests_per_s": rate to 0.1, **summary()}` of a
    `capacity_search` with `add_load_rate_args`' options. Exits when no trial passed: a share
    of nothing is no load. No warm-up: callers warm up first (`warm_up`).
    """
    if args.rate is not None:
        return None, float(args.rate)
    found = capacity_search(url, texts, args, log=log)
    if found.rate <= 0:
        raise SystemExit(
            f"no trial met p99 <= {args.p99_ms} ms even at the lowest rate tried; "
            "lower --start-rate, raise --p99-ms or pass --rate"
        )
    log(f"capacity {found.rate:.1f} req/s (first failing rate {found.lowest_fail})")
    capacity = {"requests_per_s": round(found.rate, 1), **found.summary()}
    return capacity, capacity["requests_per_s"] * args.load_fraction


# --- results -----------------------------------------------------------------------------------


def merge_open_loop(results: list[OpenLoopResult]) -> OpenLoopResult:
    """Pool several runs at one rate into one result (counts summed, latencies joined)."""
    if not results:
        raise ValueError("merge_open_loop needs at least one result")
    out = OpenLoopResult(rate=results[0].rate, duration_s=0.0)
    out.connections, out.arrival = results[0].connections, results[0].arrival
    for r in results:
        out.duration_s += r.duration_s
        out.elapsed_s += r.elapsed_s
        out.scheduled += r.scheduled
        out.sent += r.sent
        out.ok += r.ok
        out.failed += r.failed
        out.late_sends += r.late_sends
        out.queued_sends += r.queued_sends
        out.max_dispatch_lag_s = max(out.max_dispatch_lag_s, r.max_dispatch_lag_s)
        out.latencies_s.extend(r.latencies_s)
        for key, n in r.failures.items():
            out.failures[key] = out.failures.get(key, 0) + n
    return out


def latency_stats(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p99/max in ms (rounded to µs) of some latencies in seconds; None for each with none."""
    ordered = sorted(latencies_s)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }
