"""Typed configuration for a whole run: one YAML file, one section per stage.

Every model forbids unknown keys, so a typo is an error that names the dotted path of the
field instead of a setting that is silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmforge.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CorpusConfig(Section):
    """The embedded demo corpus: generated, seeded, with a ground-truth side file."""

    docs: int = Field(6000, ge=50, description="Number of documents to generate (before noise).")
    noise_rate: float = Field(
        0.37, ge=0.0, le=0.95, description="Share of documents that carry planted noise."
    )
    seed: int = Field(0, description="Random seed; the same seed gives byte-identical files.")
    zh_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of Chinese documents.")


class SourceConfig(Section):
    """One input source. `kind: auto` picks the reader from the file extension (a `url` is SQL)."""

    path: str | None = Field(
        None, description="File or folder to read (relative paths: to the config file)."
    )
    url: str | None = Field(
        None,
        description="SQLAlchemy database URL (e.g. postgresql://user@host/db) instead of a path; "
        "read `table` or `query`.",
    )
    kind: Literal[
        "auto", "jsonl", "csv", "tsv", "parquet", "sqlite", "sql", "html", "text", "hf"
    ] = "auto"
    name: str | None = Field(None, description="Source name recorded in lineage; default: stem.")
    text_field: str = Field("text", description="Field holding the text (records).")
    id_field: str = Field("id", description="Field holding the record id, kept as is.")
    label_field: str = Field("label", description="Field holding the class label, if any.")
    table: str | None = Field(None, description="Table to read (sqlite/sql sources).")
    query: str | None = Field(None, description="SQL query to run instead of a whole table.")
    template: str | None = Field(
        None,
        description="Render structured records to text, e.g. '{product}: {comment}'. "
        "Fields not in the template are kept in meta.",
    )
    max_docs: int | None = Field(
        None, ge=1, description="Cap: read at most this many records from this source."
    )
    weight: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of this source's records to keep, picked deterministically by a hash "
        "of each record's position (mixes sources in chosen proportions).",
    )

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of `path` (file or folder) or `url` (SQL database)")
        return self


class NearDedupConfig(Section):
    """Near-duplicate removal with MinHash LSH; the first document read of a cluster stays.

    The defaults shingle every text by characters (word_ngram 0), so a short review with a
    typo, a filler word or an appended sentence still meets its original; they were chosen
    on the demo corpus for residual noise and clean documents lost together.
    """

    enabled: bool = True
    num_perm: int = Field(112, ge=8, description="Hashes per MinHash signature.")
    bands: int = Field(28, ge=1, description="LSH bands; must divide num_perm.")
    char_ngram: int = Field(3, ge=1, description="Shingle size in characters.")
    word_ngram: int = Field(
        0, ge=0, description="Shingle size in words for non-CJK text; 0: characters for all text."
    )
    threshold: float = Field(
        0.65, gt=0.0, le=1.0, description="Jaccard a candidate pair must reach."
    )
    verify: Literal["exact", "estimate"] = Field(
        "exact",
        description="exact: candidate pairs are checked on their shingle sets (about 8 bytes "
        "per distinct shingle kept until dedup); estimate: on the MinHash signatures only "
        "(less disk and memory, a few percent of pairs misjudged near the threshold).",
    )
    link: Literal["survivor", "component"] = Field(
        "survivor",
        description="survivor: a document is removed only when it is itself similar to the "
        "document that stays; component: every member of a connected cluster is removed "
        "(copies of copies too).",
    )
    seed: int = 1

    @model_validator(mode="after")
    def _bands_divide(self) -> NearDedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(
                f"bands={self.bands} must divide num_perm={self.num_perm} "
                "(each band holds num_perm / bands hashes)"
            )
        return self


class AnomalyConfig(Section):
    """Statistical outliers over per-document features, thresholds fitted on the corpus."""

    enabled: bool = True
    k: float | None = Field(
        None, gt=0.0, description="Robust z-score cut-off; default: the detector's own."
    )
    sample_docs: int = Field(
        50000, ge=100, description="Documents sampled (deterministically) to fit thresholds."
    )


class NoiseModelConfig(Section):
    """A hashed n-gram classifier trained on the rules' decisions (weak labels)."""

    enabled: bool = True
    threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="P(noise) that drops a document; default: fitted."
    )
    sample_docs: int = Field(
        20000, ge=100, description="Documents sampled (deterministically) per class to train on."
    )
    labelled: str | None = Field(
        None,
        description='Optional hand-labelled sample (jsonl: {"text": ..., "noisy": true|false}), '
        "weighted above the weak labels.",
    )
    seed: int = 0


PII_TYPE_NAMES = ("EMAIL", "PHONE", "ID_CN", "BANK_CARD", "IP", "URL_SECRET", "PASSPORT", "NAME")


class PiiConfig(Section):
    """PII detection and masking. `pii: mask` and `pii: off` are accepted as shorthands."""

    enabled: bool = True
    mode: Literal["placeholder", "pseudonym", "redact"] = Field(
        "placeholder",
        description="placeholder: [PHONE]; pseudonym: a keyed consistent token; redact: removed.",
    )
    types: list[str] = Field(
        default_factory=lambda: [t for t in PII_TYPE_NAMES if t != "NAME"],
        description="PII types to detect. NAME (person names: a Chinese tagger trained on "
        "news, English name lists) is opt-in: on review text about half of its Chinese "
        "matches are not names.",
    )
    key_env: str = Field(
        "LMFORGE_PII_KEY",
        description="Environment variable holding the secret key of pseudonym mode "
        "(never written in a config file).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value == "mask":
            return {}
        if value == "off":
            return {"enabled": False}
        return value

    @model_validator(mode="after")
    def _known_types(self) -> PiiConfig:
        unknown = [t for t in self.types if t not in PII_TYPE_NAMES]
        if unknown:
            raise ValueError(
                f"unknown PII type {unknown[0]!r}; choose from {', '.join(PII_TYPE_NAMES)}"
            )
        return self


class DataConfig(Section):
    """The cleaning line: normalise, filter, dedup, mask PII, write Parquet shards."""

    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Inputs; empty means the generated demo corpus of this run.",
    )
    min_chars: int = Field(8, ge=0, description="Drop documents shorter than this (after cleanup).")
    max_chars: int = Field(20000, ge=1, description="Drop documents longer than this.")
    min_letter_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="Minimum share of letters/CJK among non-space chars."
    )
    max_repeated_ngram_ratio: float = Field(
        0.3, ge=0.0, le=1.0, description="Drop texts where one repeated n-gram covers more."
    )
    languages: list[str] = Field(
        default_factory=lambda: ["zh", "en"], description="Languages to keep (zh, en)."
    )
    dedup: bool = Field(True, description="Remove exact duplicates (normalised-text hash).")
    near_dedup: NearDedupConfig = Field(default_factory=lambda: NearDedupConfig())
    anomaly: AnomalyConfig = Field(default_factory=lambda: AnomalyConfig())
    noise_model: NoiseModelConfig = Field(default_factory=lambda: NoiseModelConfig())
    pii: PiiConfig = Field(default_factory=lambda: PiiConfig())
    shard_docs: int = Field(5000, ge=1, description="Documents per shard (input and output).")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: worker processes on this machine; ray: Ray Data tasks."
    )
    workers: int = Field(0, ge=0, description="Worker processes (local executor); 0: all cores.")
    ground_truth: str | None = Field(
        None,
        description="Ground-truth side file (jsonl) to measure noise before/after; "
        "default: the generated corpus's, when there is one.",
    )


class ModelConfig(Section):
    """A small transformer encoder classifier."""

    d_model: int = Field(128, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int = Field(256, ge=8)
    max_len: int = Field(128, ge=8, description="Longest token sequence; longer texts truncate.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


class TokenizerConfig(Section):
    vocab_size: int = Field(8000, ge=100, description="WordPiece vocabulary size.")
    min_frequency: int = Field(2, ge=1)


class TrainConfig(Section):
    """Single-process training of the classifier (the loop itself is model-agnostic)."""

    model_name: str = Field("demo-classifier", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    batch_size: int = Field(32, ge=1)
    max_steps: int = Field(600, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Cosine floor as a share of lr.")
    grad_clip: float = Field(1.0, ge=0.0, description="Max gradient norm; 0 disables.")
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Held-out share for eval.")
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = library default.")
    baseline: bool = Field(
        True, description="Also fit TF-IDF n-grams + logistic regression: the floor to beat."
    )


class CompressConfig(Section):
    method: Literal["int8_dynamic"] = "int8_dynamic"
    latency_batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    latency_repeats: int = Field(30, ge=1, description="Timed repetitions per batch size.")
    eval_limit: int = Field(0, ge=0, description="Cap on eval documents; 0 = all.")
    threads: int = Field(
        1, ge=1, description="torch CPU threads while timing, fixed so before/after compare."
    )
    onnx: bool = Field(
        False,
        description="Also export ONNX (fp32 and int8) variants, measured and registered.",
    )


class BatchingConfig(Section):
    """Dynamic batching of one served model version."""

    max_batch_size: int = Field(32, ge=1, description="Most texts merged into one model call.")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0.0,
        description="How long the first queued request waits for others to fill a batch. "
        "0: never wait; requests that arrive while the model is busy are still merged.",
    )
    max_queue_texts: int = Field(
        512, ge=1, description="Texts waiting per model version; beyond it requests get 429."
    )
    timeout_ms: float = Field(
        5000.0,
        gt=0.0,
        description="Per-request deadline (504 after it); a client's X-Timeout-Ms may lower it.",
    )
    overload_status: Literal[429, 503] = Field(
        429, description="Status for a full queue (both carry Retry-After)."
    )


class BackendConfig(Section):
    kind: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime for a folder holding model.onnx, else PyTorch."
    )
    threads: int | None = Field(
        None, ge=1, description="Intra-op threads per worker; default: cores // workers."
    )


class CacheConfig(Section):
    kind: Literal["none", "lru", "redis"] = "lru"
    max_entries: int = Field(10_000, ge=1, description="LRU capacity (predictions).")
    ttl_s: float = Field(300.0, gt=0.0, description="Seconds a cached prediction lives.")
    redis_url: str | None = Field(None, description="redis://host:port/db for kind: redis.")


class ShadowConfig(Section):
    queue_size: int = Field(
        256, ge=1, description="Requests waiting for the shadow model; more are dropped."
    )
    sample: float = Field(1.0, ge=0.0, le=1.0, description="Share of requests mirrored.")
    isolate: bool = Field(
        True,
        description="Run the shadow model in its own process at idle CPU priority, so it "
        "only uses CPU that live traffic leaves free (false: a thread in the server).",
    )
    threads: int = Field(1, ge=1, description="Intra-op threads of the isolated shadow model.")
    cpus: list[int] | None = Field(
        None,
        description="Pin the isolated shadow model to these CPU numbers (Linux), e.g. cores "
        "the live workers do not use.",
    )


class TracingConfig(Section):
    enabled: bool = True
    sample_ratio: float = Field(0.01, ge=0.0, le=1.0, description="Share of requests traced.")
    exporter: Literal["none", "console", "otlp", "memory"] = Field(
        "none", description="Where spans go; otlp needs opentelemetry-exporter-otlp."
    )
    otlp_endpoint: str | None = None


class AlertsConfig(Section):
    enabled: bool = True
    window_s: float = Field(5.0, gt=0.0, description="Seconds per point of the series.")
    z_threshold: float = Field(4.0, gt=0.0, description="Robust z-score that raises an alert.")
    ewma_alpha: float = Field(0.3, gt=0.0, le=1.0)
    min_points: int = Field(12, ge=3, description="Points of history before alerts can fire.")
    webhook_url: str | None = Field(None, description="POSTed a JSON alert, if set.")


class AuthConfig(Section):
    require_for_predict: bool = Field(
        False, description="Predict needs an API key too (admin endpoints always do)."
    )
    default_rate: float = Field(50.0, gt=0.0, description="Requests/s per key unless set.")
    default_burst: int = Field(100, ge=1)


class RayServeConfig(Section):
    """`lmforge serve --backend ray`: the same app as Ray Serve replicas."""

    num_replicas: int | None = Field(
        1, ge=1, description="Fixed replica count; null to autoscale between min and max."
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(
        8.0, gt=0.0, description="Autoscaling target of in-flight requests per replica."
    )
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per replica.")
    health_check_period_s: float = Field(2.0, gt=0.0)
    health_check_timeout_s: float = Field(10.0, gt=0.0)
    address: str | None = Field(
        None, description="Ray cluster to join (ray://... or auto); default: start one locally."
    )


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str | None = Field(None, description="Default model name; default: the only one.")
    max_texts: int = Field(64, ge=1, description="Most texts in one request.")
    max_chars: int = Field(4000, ge=1, description="Longest accepted text, in characters.")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    workers: int = Field(1, ge=1, description="Worker processes under the supervisor.")
    refresh_s: float = Field(
        0.2, gt=0.0, description="How often each worker re-reads aliases and routing."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Empty: CORS off.")
    json_logs: bool = Field(False, description="Log one JSON object per line (request ids).")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    ray: RayServeConfig = Field(default_factory=RayServeConfig)


class BenchConfig(Section):
    duration_s: float = Field(10.0, gt=0.0)
    concurrency: int = Field(8, ge=1)
    texts_per_request: int = Field(1, ge=1)
    warmup_s: float = Field(1.0, ge=0.0)


class RunConfig(Section):
    """A whole run. `workdir` holds every stage's artifacts and the model registry."""

    workdir: str = Field("runs/demo", min_length=1, description="The run directory.")
    corpus: CorpusConfig | None = Field(
        None, description="Generate the embedded demo corpus as the data stage's input."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    def section_hash(self, name: str) -> str:
        """Content hash of one section, used to decide whether a stage must rerun."""
        section = getattr(self, name)
        payload = json.dumps(
            None if section is None else section.model_dump(mode="json"), sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _format_error(err: ValidationError, root: type[BaseModel] | None = None) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        parent = _model_at(root or RunConfig, [p for p in first["loc"][:-1] if isinstance(p, str)])
        if parent is not None:
            msg += f"; allowed here: {', '.join(sorted(parent.model_fields))}"
    elif first["type"] == "literal_error" and "expected" in first.get("ctx", {}):
        msg = f"must be one of {first['ctx']['expected']}"
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    got = first.get("input")
    hide = isinstance(got, dict) or first["type"] in ("missing", "extra_forbidden")
    shown = "" if hide else f", got {got!r}"
    return f"config field '{path}': {msg}{shown}{extra}"


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one `--set a.b.c=value`; the value is read as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key; use a dotted path like train.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Load YAML (or start from `base`), apply `--set` overrides, validate.

    Relative paths written in the file (workdir, data sources, ground truth) resolve against
    the file's folder; relative paths given with `--set` resolve against the current folder.
    """
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw.update(_read_yaml(path))
        _anchor_paths(raw, path.resolve().parent)
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    return _resolve_paths(cfg, Path.cwd())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a list")
    return loaded


def _anchor(value: Any, root: Path) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str(root / value)
    return value


def _anchor_paths(raw: dict[str, Any], root: Path) -> None:
    """Make the file's relative paths relative to the file, before overrides are applied."""
    if "workdir" in raw:
        raw["workdir"] = _anchor(raw["workdir"], root)
    data = raw.get("data")
    if isinstance(data, dict):
        if "ground_truth" in data:
            data["ground_truth"] = _anchor(data["ground_truth"], root)
        for source in data.get("sources") or []:
            if isinstance(source, dict) and source.get("path"):
                source["path"] = _anchor(source["path"], root)


def _absolute(value: str, root: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())


def _resolve_paths(cfg: RunConfig, root: Path) -> RunConfig:
    cfg.workdir = _absolute(cfg.workdir, root)
    for source in cfg.data.sources:
        if source.path is not None:
            source.path = _absolute(source.path, root)
    if cfg.data.ground_truth:
        cfg.data.ground_truth = _absolute(cfg.data.ground_truth, root)
    return cfg


def config_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
