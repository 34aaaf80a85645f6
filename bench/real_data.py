"""Run the cleaning line on the real datasets beside the checkout and sample what it removed.

    python bench/real_data.py --samples 30 --samples-out /tmp/removed.jsonl

Reads ../shared/data (waimai_10k, online_shopping_10_cats, SST-2 train), cleans each one
with the default DataConfig (min_chars 2: real reviews are short), and prints ONE JSON
object: per dataset, documents in/out, removals per step and reason, PII found by type, the
language mix and docs/s. `--samples-out` writes up to N removed documents per reason
(seeded random choice) for a person to read and judge.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from lmforge.config import DataConfig, SourceConfig
from lmforge.data.clean import clean_sources

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _datasets(tmp: Path) -> dict[str, SourceConfig]:
    shopping = tmp / "online_shopping_10_cats.csv"
    archive = zipfile.ZipFile(DATA / "chinese" / "online_shopping_10_cats.zip")
    with archive, archive.open("online_shopping_10_cats.csv") as src, open(shopping, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {
        "waimai_10k": SourceConfig(
            path=str(DATA / "chinese" / "waimai_10k.csv"), name="waimai", text_field="review"
        ),
        "online_shopping_10_cats": SourceConfig(
            path=str(shopping), name="shopping", text_field="review", label_field="cat"
        ),
        "sst2_train": SourceConfig(
            path=str(DATA / "sst2" / "train.tsv"), name="sst2", text_field="sentence"
        ),
    }


def _samples(out: Path, per_reason: int, rng: random.Random) -> list[dict]:
    by_reason: dict[str, list[dict]] = {}
    for shard in sorted((out / "rejected").glob("part-*.parquet")):
        for row in pq.read_table(shard, columns=["id", "text", "step", "reason"]).to_pylist():
            by_reason.setdefault(f"{row['step']}:{row['reason']}", []).append(row)
    picked = []
    for key in sorted(by_reason):
        rows = by_reason[key]
        picked.extend(rng.sample(rows, min(per_reason, len(rows))))
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30, help="removed docs kept per reason")
    parser.add_argument("--samples-out", type=Path, help="write the sampled removals (jsonl)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="dataset names to run (default: all)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(json.dumps({"error": f"{DATA} not found: run from a checkout next to shared/"}))
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-real-"))
    rng = random.Random(0)
    result: dict[str, object] = {}
    samples: list[dict] = []
    try:
        for name, source in _datasets(tmp).items():
            if args.only and name not in args.only:
                continue
            out = tmp / name
            stats = clean_sources(
                [source], out, DataConfig(min_chars=2, workers=args.workers), Console(quiet=True)
            )
            removed = {
                f"{s['step']}:{reason}": n
                for s in stats["funnel"]
                for reason, n in s["dropped"].items()
            }
            result[name] = {
                "docs_in": stats["docs_in"],
                "docs_out": stats["docs_out"],
                "removed": dict(sorted(removed.items(), key=lambda kv: -kv[1])),
                "pii": stats["pii"],
                "pii_docs_masked": stats["pii_docs_masked"],
                "languages": stats["languages"],
                "dedup_clusters": stats["dedup_clusters"],
                "docs_per_second": stats["docs_per_second"],
            }
            for row in _samples(out, args.samples, rng):
                samples.append({"dataset": name, **row})
            pii_rows = []
            for shard in sorted((out / "clean").glob("part-*.parquet")):
                for row in pq.read_table(shard, columns=["id", "text"]).to_pylist():
                    if "[" in row["text"] and any(
                        f"[{t}" in row["text"] for t in ("PHONE", "EMAIL", "NAME", "ID_CN")
                    ):
                        pii_rows.append(row)
            for row in rng.sample(pii_rows, min(args.samples, len(pii_rows))):
                samples.append({"dataset": name, "step": "pii", "reason": "masked", **row})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.samples_out:
        with open(args.samples_out, "w", encoding="utf-8") as fh:
            for row in samples:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        result["samples_file"] = str(args.samples_out)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
