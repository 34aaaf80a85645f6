"""Kill -9 the local executor at random moments, resume, and compare with an uninterrupted run.

    python bench/crash_safety.py --docs 200000 --kills 10 --workers 2

Generates a corpus (not timed), runs `lmforge data clean` once without interruption, then
again into a fresh folder, killing the whole process group with SIGKILL at random moments
`--kills` times and finally letting it finish. Prints ONE JSON object: whether the resumed
output holds exactly the same content (same id set, same texts, same step and reason for
every rejected record) as the uninterrupted one, and when each kill landed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from lmforge.config import CorpusConfig
from lmforge.demo import generate_corpus


def _command(corpus: Path, out: Path, workers: int) -> list[str]:
    meta = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    config = out.parent / f"{out.name}.yaml"
    sources = []
    for src in meta["sources"]:
        src = dict(src)
        src["path"] = str(corpus / src["path"])
        sources.append(src)
    config.write_text(json.dumps({"data": {"sources": sources}}), encoding="utf-8")
    return [
        sys.executable,
        "-m",
        "lmforge.cli",
        "data",
        "clean",
        "--config",
        str(config),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]


def _digest(out: Path) -> dict[str, object]:
    """Content of an output folder, independent of shard boundaries."""
    result: dict[str, object] = {}
    for part, cols in (("clean", ["id", "text"]), ("rejected", ["id", "text", "step", "reason"])):
        rows = []
        for shard in sorted((out / part).glob("part-*.parquet")):
            table = pq.read_table(shard, columns=cols)
            rows.extend(zip(*(table.column(c).to_pylist() for c in cols), strict=True))
        rows.sort(key=lambda r: tuple("" if v is None else v for v in r))
        h = hashlib.sha256()
        for row in rows:
            h.update(json.dumps(row, ensure_ascii=False).encode())
        result[part] = {"rows": len(rows), "sha256": h.hexdigest()}
    return result


def _phase_reached(out: Path) -> str:
    work = out / "_work"
    if not work.is_dir():
        return "done" if (out / "stats.json").is_file() else "start"
    reached = "ingest"
    for phase in ("filter", "fit", "score", "dedup", "finalize"):
        folder = work / phase
        if folder.is_dir() and any(folder.iterdir()):
            reached = phase
    return reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep corpus and outputs here")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="lmforge-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        corpus = root / "corpus"
        if not (corpus / "ground_truth.jsonl").is_file():
            generate_corpus(corpus, CorpusConfig(docs=args.docs, seed=args.seed))
        ref = root / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(
            _command(corpus, ref, args.workers),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reference_seconds = time.perf_counter() - t0

        out = root / "killed"
        shutil.rmtree(out, ignore_errors=True)
        rng = random.Random(args.seed)
        kills = []
        started = time.perf_counter()
        while len(kills) < args.kills:
            proc = subprocess.Popen(
                _command(corpus, out, args.workers),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            # Spread the kills over a whole run: a resumed run has less left to do.
            delay = rng.uniform(0.5, reference_seconds / 2)
            time.sleep(delay)
            if proc.poll() is not None:
                shutil.rmtree(out, ignore_errors=True)  # finished before the kill: start over
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append({"after_s": round(delay, 2), "phase_reached": _phase_reached(out)})
        final = subprocess.run(
            _command(corpus, out, args.workers),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        total = time.perf_counter() - started
        want, got = _digest(ref), _digest(out)
        result = {
            "docs": args.docs,
            "workers": args.workers,
            "kills": len(kills),
            "kill_log": kills,
            "final_returncode": final.returncode,
            "reference_seconds": round(reference_seconds, 1),
            "killed_and_resumed_seconds": round(total, 1),
            "identical": want == got,
            "reference": want,
            "resumed": got,
        }
        if final.returncode:
            result["final_stderr"] = final.stderr[-2000:]
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
