"""The `lmforge` command line: one command per stage, plus `demo` and `run` for all of them.

Heavy modules are imported inside the commands that use them, so `--help` and the short
commands (`registry list`, `keys create`, ...) start at once: torch and the server, but also
the run config (pydantic) and the registry (SQLAlchemy), which cost a few hundred ms each.
tests/test_cli.py checks that importing this module leaves them out.

No `from __future__ import annotations` here: typer reads every command's annotations on
each run, and string annotations would be compiled and evaluated again each time (~45 ms).
"""

import atexit
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

# The sub-apps are mounted at import time (for `--help`); their modules keep their own heavy
# imports inside their commands. lmforge.pipeline is light: it imports stages when they run.
from lmforge.deploy.k8s import deploy_app
from lmforge.errors import ConfigError, InputDataError, LmforgeError, StageError
from lmforge.pipeline import STAGE_NAMES, run_pipeline, run_stage, stage_spec
from lmforge.serve.keys_cli import keys_app

if TYPE_CHECKING:  # annotations of helpers only; typer never evaluates them
    from lmforge.config import RunConfig

try:  # typer >= 0.20 vendors click; older releases use the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

# Older click has no NoArgsIsHelpError; an empty tuple makes its `except` clause match nothing.
NoArgsIsHelpError = getattr(click_exc, "NoArgsIsHelpError", ())

console = Console(stderr=False)
err_console = Console(stderr=True)

app = typer.Typer(
    name="lmforge",
    help="From raw multi-source text to a measured, monitored model service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="The data stage: read, clean, dedup, mask PII.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
registry_app = typer.Typer(
    help="The model registry: versions, aliases, rollback, traffic policy, shadow report.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(registry_app, name="registry")
app.add_typer(keys_app, name="keys")
app.add_typer(deploy_app, name="deploy")

ConfigArg = Annotated[
    Path | None, typer.Argument(help="Run config (YAML). Default: built-in defaults.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set train.lr=3e-4 (repeatable)."),
]
WorkdirOpt = Annotated[
    Path | None, typer.Option("--workdir", "-w", help="Run directory (overrides `workdir`).")
]


def _load(config: Path | None, sets: list[str] | None, workdir: Path | None) -> "RunConfig":
    from lmforge.config import load_config

    overrides = list(sets or [])
    if workdir is not None:
        overrides.append(f"workdir={Path(workdir).resolve()}")
    return load_config(config, overrides)


def _run_one(stage: str, cfg: "RunConfig") -> dict[str, Any]:
    from lmforge.workspace import Workspace

    ws = Workspace(cfg.workdir)
    _check_prerequisites(stage, cfg, ws)
    _, result = run_stage(stage_spec(stage), cfg, ws, console, force=True)
    return result.summary if result else {}


_PREREQUISITES = {"train": "data", "compress": "train", "bench": "train", "report": "data"}


def _check_prerequisites(stage: str, cfg: "RunConfig", ws: Any) -> None:
    needed = _PREREQUISITES.get(stage)
    if stage == "data" and cfg.corpus is not None and not cfg.data.sources:
        needed = "corpus"
    if needed and not ws.is_complete(needed):
        command = {
            "corpus": "lmforge run CONFIG --only corpus",
            "data": "lmforge data run CONFIG",
        }.get(needed, f"lmforge {needed} CONFIG")
        raise StageError(
            f"stage '{stage}' needs the '{needed}' stage's output in {ws.root}, which is missing; "
            f"run `{command}` first (or `lmforge run CONFIG` for everything)"
        )


def _print_summary(summaries: dict[str, dict[str, Any]], workdir: str) -> None:
    from lmforge.report.summary_table import summary_table

    console.print(summary_table(summaries))
    report = Path(workdir) / "report.html"
    if report.exists():
        console.print(f"report: [bold]{report}[/bold]  (numbers in {report.with_suffix('.json')})")


@app.command()
def demo(
    workdir: WorkdirOpt = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller corpus and model: about 2 minutes.")
    ] = False,
    sets: SetOpt = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Rerun this stage even if up to date.")
    ] = None,
) -> None:
    """Run the whole lifecycle on the embedded, generated corpus (no GPU, no network)."""
    from lmforge.config import apply_overrides, load_config
    from lmforge.presets import demo_preset

    raw = demo_preset(quick)
    extra = list(sets or [])
    if workdir is not None:
        extra.append(f"workdir={Path(workdir).resolve()}")
    cfg = load_config(base=apply_overrides(raw, []), overrides=extra)
    console.print(
        f"[bold]lmforge demo[/bold] ({'quick' if quick else 'full'}): "
        f"{cfg.corpus.docs if cfg.corpus else 0} generated documents -> {cfg.workdir}"
    )
    summaries = run_pipeline(cfg, console, force=force or ())
    _print_summary(summaries, cfg.workdir)


@app.command("run")
def run_all(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    sets: SetOpt = None,
    workdir: WorkdirOpt = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help=f"Rerun this stage even if up to date: {STAGE_NAMES}."),
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only these stages (repeatable).")
    ] = None,
) -> None:
    """Run all stages of CONFIG; stages whose inputs and config did not change are skipped."""
    cfg = _load(config, sets, workdir)
    summaries = run_pipeline(cfg, console, force=force or (), only=only)
    _print_summary(summaries, cfg.workdir)


@data_app.command("run")
def data_run(config: ConfigArg = None, sets: SetOpt = None, workdir: WorkdirOpt = None) -> None:
    """Run the data stage of a run config into WORKDIR/data."""
    summary = _run_one("data", _load(config, sets, workdir))
    _print_summary({"data": summary}, "")


@data_app.command("clean")
def data_clean(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files, folders (jsonl[.gz|.zst], csv, tsv, parquet, sqlite, html, txt, a saved "
            "Hugging Face dataset) or a database URL (with --table or --query); added to the "
            "config's data.sources."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Run config; its `data` section is used.")
    ] = None,
    sets: SetOpt = None,
    executor: Annotated[
        str | None,
        typer.Option("--executor", help="local (worker processes) or ray (Ray Data tasks)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=0, help="Worker processes; 0: all cores.")
    ] = None,
    table: Annotated[
        str | None, typer.Option("--table", help="Table to read from a database input.")
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", help="SQL query to read from a database input.")
    ] = None,
    ground_truth: Annotated[
        Path | None, typer.Option("--ground-truth", help="Ground-truth jsonl to measure noise.")
    ] = None,
) -> None:
    """Clean INPUT into OUT/clean and OUT/rejected Parquet shards with OUT/stats.json.

    An interrupted run (Ctrl-C, kill -9, a crash) resumes when the same command runs again.
    """
    from lmforge.data.clean import clean_sources, sources_from_paths

    extra = list(sets or [])
    if executor is not None:
        extra.append(f"data.executor={executor}")
    if workers is not None:
        extra.append(f"data.workers={workers}")
    cfg = _load(config, extra, None)
    truth = ground_truth or (Path(cfg.data.ground_truth) if cfg.data.ground_truth else None)
    sources = list(cfg.data.sources) + sources_from_paths(inputs or [], table=table, query=query)
    if not sources:
        raise InputDataError(
            "nothing to clean: give INPUT files or folders, or a --config whose data.sources "
            "lists them"
        )
    stats = clean_sources(
        sources,
        Path(out),
        cfg.data,
        console,
        ground_truth=truth,
    )
    _print_summary({"data": stats}, "")
    console.print(f"wrote {out}/clean, {out}/rejected and {out}/stats.json")


@app.command()
def train(
    config: ConfigArg = None,
    sets: SetOpt = None,
    workdir: WorkdirOpt = None,
    nproc: Annotated[
        int | None,
        typer.Option("--nproc", min=1, help="Local ranks (training-run configs); default 1."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (training-run configs)."),
    ] = None,
    max_restarts: Annotated[
        int, typer.Option("--max-restarts", min=0, help="Relaunch failed ranks this often.")
    ] = 0,
) -> None:
    """Train a model.

    With a training-run config (a file with a top-level `model:` section, e.g.
    configs/tiny-lm.yaml) this runs the distributed engine on --nproc local ranks and writes
    OUT/metrics.jsonl, OUT/checkpoints and OUT/model; rerunning resumes. With a pipeline
    config it trains the tokenizer and classifier on WORKDIR/data and registers the model.
    """
    from lmforge.train.run_config import is_run_config

    if config is not None and config.is_file() and is_run_config(config):
        _train_run(config, list(sets or []), out, nproc or 1, max_restarts)
        return
    if nproc is not None or out is not None:
        raise ConfigError(
            "--nproc and --out need a training-run config (one with a top-level `model:` "
            "section, like configs/tiny-lm.yaml)"
        )
    _print_summary({"train": _run_one("train", _load(config, sets, workdir))}, "")


def _train_run(config: Path, sets: list[str], out: Path | None, nproc: int, restarts: int) -> None:
    from lmforge.train.launch import check_layout, launch
    from lmforge.train.run_config import load_run_config

    cfg = load_run_config(config, sets)
    check_layout(cfg, nproc)
    out = (out or Path("runs") / config.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if nproc > 1:
        # Tokenize here, once: a data mistake is then one line, not a failed rank under
        # torchrun, and the ranks find the prepared arrays up to date.
        from lmforge.train.tasks import prepare_data

        prepare_data(cfg, out / "data")
    code = launch(config.resolve(), out, nproc, sets, restarts)
    if code:
        raise typer.Exit(code)
    console.print(f"metrics: {out / 'metrics.jsonl'}  model: {out / 'model'}")


@app.command()
def compress(config: ConfigArg = None, sets: SetOpt = None, workdir: WorkdirOpt = None) -> None:
    """Quantise the production model; measure size, latency and accuracy before and after."""
    _print_summary({"compress": _run_one("compress", _load(config, sets, workdir))}, "")


@app.command()
def serve(
    registry: Annotated[
        Path | None, typer.Option("--registry", "-r", help="Registry folder (WORKDIR/registry).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Default model for /v1/predict (default: the only one).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes behind a retrying front, restarted if they die."),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="local (uvicorn processes) or ray (Ray Serve replicas).")
    ] = "local",
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Log one JSON object per line.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Run config; `serve` section used.")
    ] = None,
    sets: SetOpt = None,
) -> None:
    """Serve the registry's models over HTTP (POST /v1/predict, /v1/models/NAME/predict)."""
    from pydantic import ValidationError

    from lmforge.config import load_config

    cfg = load_config(config, list(sets or []))
    # Typed options are set after loading, not through YAML: `--model 2024` stays a string.
    try:
        for key, value in (("host", host), ("port", port), ("model", model), ("workers", workers)):
            if value is not None:
                setattr(cfg.serve, key, value)
    except ValidationError as exc:
        raise ConfigError(f"--{exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    registry_dir = Path(registry if registry is not None else Path(cfg.workdir) / "registry")
    if json_logs:
        cfg.serve.json_logs = True  # reaches every worker through the config
    if backend == "ray":
        from lmforge.serve.ray_serve import run_ray_serve

        run_ray_serve(registry_dir, cfg.serve, console=console)
    elif backend != "local":
        raise ConfigError(f"--backend {backend!r}: use local or ray")
    elif cfg.serve.workers > 1:
        from lmforge.serve.supervisor import run_supervised

        run_supervised(registry_dir, cfg.serve, console=console)
    else:
        from lmforge.serve.server import run_server

        run_server(registry_dir, cfg.serve, console=console)


@app.command()
def gateway(
    upstream: Annotated[
        list[str], typer.Option("--upstream", "-u", help="Base URL of a server (repeatable).")
    ],
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1_000_000,
) -> None:
    """A retrying front for several servers (e.g. one per zone): failover without errors."""
    from lmforge.serve.gateway import run_gateway

    run_gateway(list(upstream), host, port, max_body_bytes, console=console)


@app.command()
def bench(
    config: ConfigArg = None,
    sets: SetOpt = None,
    workdir: WorkdirOpt = None,
    url: Annotated[
        str | None, typer.Option(help="Load an already running server instead of starting one.")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds of load.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent clients.")] = None,
) -> None:
    """Start the server on WORKDIR/registry, drive concurrent load, report latency percentiles."""
    overrides = list(sets or [])
    if duration is not None:
        overrides.append(f"bench.duration_s={duration}")
    if concurrency is not None:
        overrides.append(f"bench.concurrency={concurrency}")
    cfg = _load(config, overrides, workdir)
    if url is not None:
        from lmforge.bench.loadgen import default_texts, run_bench

        result = run_bench(url, cfg.bench, default_texts())
        console.print_json(json.dumps(result))
        return
    _print_summary({"bench": _run_one("bench", cfg)}, "")


@app.command()
def report(
    config: ConfigArg = None,
    sets: SetOpt = None,
    workdir: WorkdirOpt = None,
    stats: Annotated[
        Path | None,
        typer.Option(
            "--stats", help="Render one `data clean` run's stats.json (next to it, report.html)."
        ),
    ] = None,
) -> None:
    """Write WORKDIR/report.json and WORKDIR/report.html from the stages' outputs."""
    if stats is not None:
        from lmforge.report.data_section import render_data_page
        from lmforge.workspace import atomic_write_text, read_json

        if not stats.is_file():
            raise InputDataError(f"stats file not found: {stats}; give OUT/stats.json of a run")
        try:
            values = read_json(stats)
        except ValueError:
            raise InputDataError(f"{stats} is not valid JSON; rerun `lmforge data clean`") from None
        html_path = stats.with_name("report.html")
        atomic_write_text(html_path, render_data_page(values, f"lmforge data: {stats.parent}"))
        console.print(f"report: [bold]{html_path}[/bold]")
        return
    cfg = _load(config, sets, workdir)
    summary = _run_one("report", cfg)
    console.print(f"report: [bold]{summary.get('html')}[/bold]")


@config_app.command("show")
def config_show(config: ConfigArg = None, sets: SetOpt = None) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML."""
    from lmforge.config import dump_config, load_config

    console.print(dump_config(load_config(config, sets or [])), markup=False, highlight=False)


@config_app.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON schema of the run config."""
    from lmforge.config import config_schema

    console.print_json(json.dumps(config_schema()))


@registry_app.command("list")
def registry_list(
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """List models, versions, aliases and their metrics."""
    from rich.table import Table

    from lmforge.registry import ModelRegistry

    reg = ModelRegistry(registry, create=False)
    table = Table("model", "version", "aliases", "metrics", "hash")
    for v in reg.versions():
        shown = ", ".join(f"{k}={_fmt(val)}" for k, val in list(v.metrics.items())[:6])
        table.add_row(v.name, str(v.version), ", ".join(v.aliases), shown, v.content_hash[:12])
    console.print(table)


@registry_app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Point an alias (default: production) at a version; the change is kept in the history."""
    from lmforge.registry import ModelRegistry

    reg = ModelRegistry(registry, create=False)
    reg.set_alias(name, alias, version)
    console.print(f"{name}: {alias} -> v{version}")


@registry_app.command("rollback")
def registry_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Point an alias back at the version it had before its latest change."""
    from lmforge.registry import ModelRegistry

    reg = ModelRegistry(registry, create=False)
    old, new = reg.rollback(name, alias)
    console.print(f"{name}: {alias} v{old} -> v{new}")


@registry_app.command("history")
def registry_history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Every alias change of a model, oldest first."""
    import datetime as dt

    from rich.table import Table

    from lmforge.registry import ModelRegistry

    reg = ModelRegistry(registry, create=False)
    table = Table("when (UTC)", "alias", "from", "to")
    for c in reg.history(name, alias):
        when = dt.datetime.fromtimestamp(c.changed_at, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        before = "-" if c.old_version is None else f"v{c.old_version}"
        table.add_row(when, c.alias, before, f"v{c.new_version}")
    console.print(table)


@registry_app.command("register")
def registry_register(
    model_dir: Annotated[Path, typer.Argument(help="A model folder (safetensors + JSON).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    alias: Annotated[str | None, typer.Option(help="Also point this alias at it.")] = None,
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Copy a model folder into the registry as the next version of NAME."""
    from lmforge.registry import ModelRegistry, RegistryError

    if not model_dir.is_dir():
        raise RegistryError(f"model folder not found: {model_dir}")
    version = ModelRegistry(registry).register(name, model_dir, alias=alias)
    shown = f" ({alias})" if alias else ""
    console.print(f"{name}: registered v{version.version}{shown}, hash {version.content_hash[:12]}")


@registry_app.command("route")
def registry_route(
    name: Annotated[str, typer.Argument(help="Model name.")],
    canary: Annotated[
        float | None, typer.Option(help="Share of traffic for the canary alias, 0..1.")
    ] = None,
    ab: Annotated[
        list[str] | None,
        typer.Option(help="A/B arm ALIAS=WEIGHT (repeat for each arm; sticky per user key)."),
    ] = None,
    shadow: Annotated[
        bool | None, typer.Option("--shadow/--no-shadow", help="Mirror to the shadow alias.")
    ] = None,
    clear: Annotated[
        bool, typer.Option(help="Back to the default: all traffic to production.")
    ] = False,
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Show or change a model's traffic policy (canary weight, A/B split, shadow)."""
    from lmforge.registry import ModelRegistry
    from lmforge.serve.routing import check_policy_aliases, parse_policy

    reg = ModelRegistry(registry, create=False)
    policy = {} if clear else dict(reg.routing(name))
    if canary is not None:
        policy["canary_weight"] = canary
    if ab:
        policy["ab"] = _parse_arms(ab)
    if shadow is not None:
        policy["shadow"] = shadow
    parsed = parse_policy(policy)
    if clear or canary is not None or ab or shadow is not None:
        check_policy_aliases(parsed, reg.snapshot().aliases.get(name, {}))
        reg.set_routing(name, parsed.model_dump())
    console.print_json(json.dumps({"name": name, "routing": parsed.model_dump()}))


@registry_app.command("unalias")
def registry_unalias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias to remove (e.g. shadow, canary).")],
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Remove an alias: end a shadow run or a canary."""
    from lmforge.registry import ModelRegistry, RegistryError

    if alias == "production":
        raise RegistryError("the production alias cannot be removed; promote another version")
    version = ModelRegistry(registry, create=False).remove_alias(name, alias)
    console.print(f"{name}: removed {alias} (was v{version})")


@registry_app.command("shadow-report")
def registry_shadow_report(
    name: Annotated[str | None, typer.Argument(help="Model name (default: the only one).")] = None,
    since_s: Annotated[
        float | None, typer.Option("--since-s", help="Only the last N seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    registry: Annotated[Path, typer.Option("--registry", "-r", help="Registry folder.")] = Path(
        "runs/demo/registry"
    ),
) -> None:
    """Shadow agreement, score drift (PSI, KS), latency, and the A/B feedback test."""
    from lmforge.serve.analytics import shadow_report_cli

    console.print(shadow_report_cli(registry, name, since_s, as_json), markup=False)


def _parse_arms(arms: list[str]) -> dict[str, float]:
    parsed = {}
    for arm in arms:
        alias, sep, weight = arm.partition("=")
        try:
            parsed[alias] = float(weight) if sep else 1.0
        except ValueError:
            raise ConfigError(f"--ab {arm!r}: use ALIAS=WEIGHT, e.g. --ab production=1") from None
    return parsed


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130 and can resume."""
    # At exit the interpreter runs full garbage collections over every object SQLAlchemy,
    # pydantic and typer created at import: about 0.3 s, a third of `lmforge registry list`.
    # Freezing them first skips that; atexit handlers (engine disposal, multiprocessing
    # cleanup, temporary folders) still all run. Unregistered first: tests call main() often.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = app(args=args, prog_name="lmforge", standalone_mode=False)
    except NoArgsIsHelpError:
        return 2  # the help text was already printed
    except click_exc.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _error(f"{exc.format_message()}{hint}")
        return 2
    except click_exc.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except LmforgeError as exc:
        _error(str(exc))
        return exc.exit_code
    except OSError as exc:  # unwritable folder, a file where a folder should be, disk full
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return 1
    except (KeyboardInterrupt, typer.Abort):
        result = 130
    if result == 130:  # typer turns Ctrl-C into exit code 130
        _error("interrupted; rerun the same command to resume where it stopped")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
