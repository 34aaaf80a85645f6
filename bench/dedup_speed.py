"""Near-duplicate detection speed, side by side on ONE corpus: lmforge vs datasketch vs datatrove.

    python bench/dedup_speed.py --docs 100000
    python bench/dedup_speed.py --memory-docs 1000000

The corpus comes from bench/near_dup.py (English and Chinese documents with planted near copies
at edit rates 0.01-0.4). All three run MinHash LSH with the same num_perm and bands x rows:
(a) lmforge: signatures + band keys + find_clusters, timed from the raw texts, shingling
    included; "ours" verifies candidates at the default threshold 0.8, "ours_unverified" keeps
    every candidate as the two libraries do (same signatures and keys, its own cluster time),
    "ours_exact" checks candidates on exact shingle sets, as the cleaning line does by default;
(b) datasketch: MinHash.bulk + MinHashLSH(params=(bands, rows)) + a query per document +
    union-find, fed our shingle strings (prepared before the clock starts);
(c) datatrove: its four MinHash stages (signature, buckets, cluster, filter) with
    LocalPipelineExecutor(workers=1), num_buckets=bands, hashes_per_bucket=rows, on the
    documents written as JSONL, in a subprocess with a timeout; its tokenizer hands it our
    shingle strings (n_grams=1) read from a file, so its time excludes tokenisation. Stage 2
    needs tasks == num_buckets; the other stages run with tasks=1.
Recall: share of planted (original, copy) pairs with exact Jaccard >= 0.8 (our shingling) whose
two documents end in the same cluster. Precision: share of same-cluster pairs with exact Jaccard
>= 0.8 (all such pairs, or a seeded sample of 300k when there are more).
Prints ONE JSON object. `--memory-docs N` instead measures the peak RSS of our path for N
generated documents, generated and hashed in batches so that only signatures and keys are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_PAIR_SAMPLE = 300_000
_DTVENV_PYTHON = Path("/tmp/dtvenv/bin/python")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _groups(cluster_of: list[int]) -> list[list[int]]:
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(cluster_of):
        if c >= 0:
            groups[c].append(i)
    return [g for g in groups.values() if len(g) > 1]


def quality(
    cluster_of: list[int], planted_true: list[tuple[int, int]], sets: list[frozenset[str]]
) -> dict[str, Any]:
    """Recall on planted true pairs and precision of declared pairs (see module docstring)."""
    found = sum(cluster_of[a] >= 0 and cluster_of[a] == cluster_of[b] for a, b in planted_true)
    groups = _groups(cluster_of)
    declared = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    pairs = [(g[i], g[j]) for g in groups for i in range(len(g)) for j in range(i + 1, len(g))]
    if len(pairs) > _PAIR_SAMPLE:
        pairs = random.Random(0).sample(pairs, _PAIR_SAMPLE)
    good = sum(5 * len(sets[a] & sets[b]) >= 4 * len(sets[a] | sets[b]) for a, b in pairs)
    return {
        "recall": round(found / max(len(planted_true), 1), 4),
        "precision": round(good / max(len(pairs), 1), 4),
        "declared_pairs": declared,
        "removed": sum(len(g) - 1 for g in groups),
    }


def run_ours(texts: list[str]) -> tuple[dict[str, Any], list[int], list[int], list[int]]:
    """Our path, timed in phases; clusters with estimate, no and exact verification."""
    from lmforge.data.minhash import MinHasher, MinHashParams, band_keys, find_clusters

    params = MinHashParams()
    started, cpu = time.perf_counter(), time.process_time()
    sig = MinHasher(params).signatures(texts)
    signed, signed_cpu = time.perf_counter(), time.process_time()
    keys = band_keys(sig, params.bands)
    keyed = time.perf_counter()
    labels = find_clusters(keys, sig, params.threshold)
    verified = time.perf_counter()
    unverified = find_clusters(keys)  # like datasketch and datatrove: every candidate kept
    done = time.perf_counter()
    hashing = keyed - started
    # The cleaning line's default: candidates checked on exact shingle sets, timed from the
    # raw texts again (signatures and sets come out of one shingling pass).
    exact_started = time.perf_counter()
    sig_exact, sets = MinHasher(params).sketch(texts)
    exact = find_clusters(band_keys(sig_exact, params.bands), None, params.threshold, shingles=sets)
    exact_done = time.perf_counter()
    return (
        {
            "signature_seconds": round(signed - started, 2),
            # CPU time of this process: the machine is shared, wall time depends on its load
            "signature_cpu_seconds": round(signed_cpu - cpu, 2),
            "signature_docs_per_cpu_second": round(len(texts) / (signed_cpu - cpu), 1),
            "band_key_seconds": round(keyed - signed, 2),
            "cluster_seconds": round(verified - keyed, 2),
            "cluster_unverified_seconds": round(done - verified, 2),
            "seconds": round(verified - started, 2),
            "seconds_unverified": round(hashing + done - verified, 2),
            "seconds_exact": round(exact_done - exact_started, 2),
        },
        labels.tolist(),
        unverified.tolist(),
        exact.tolist(),
    )


def short_doc_speed(texts: list[str]) -> dict[str, Any]:
    """Signature throughput on the corpus documents of 100-300 characters alone."""
    from lmforge.data.minhash import MinHasher, MinHashParams

    short = [t for t in texts if 100 <= len(t) <= 300]
    hasher = MinHasher(MinHashParams())
    hasher.signatures(short[:100])  # first call builds lookup tables: not what is measured
    started, cpu = time.perf_counter(), time.process_time()
    hasher.signatures(short)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "docs": len(short),
        "mean_chars": round(sum(map(len, short)) / max(len(short), 1), 1),
        "docs_per_second": round(len(short) / wall, 1),
        "docs_per_cpu_second": round(len(short) / cpu, 1),
    }


def run_datasketch(shingles: list[list[str]], bands: int, rows: int) -> tuple[dict, list[int]]:
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as err:
        return {"error": f"datasketch is not installed: {err}"}, []
    encoded = [[s.encode() for s in doc] for doc in shingles]  # its input type, not timed
    started = time.perf_counter()
    hashes = MinHash.bulk(encoded, num_perm=bands * rows, seed=1)
    lsh = MinHashLSH(num_perm=bands * rows, params=(bands, rows))
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            session.insert(i, m)
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    clusters = [find(i) for i in range(len(hashes))]
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "docs_per_second": round(len(hashes) / seconds, 1),
    }, clusters


def _datatrove_python() -> str | None:
    probe = [sys.executable, "-c", "import datatrove"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return sys.executable
    return str(_DTVENV_PYTHON) if _DTVENV_PYTHON.exists() else None


def run_datatrove(
    texts: list[str], shingles: list[list[str]], bands: int, rows: int, timeout: int
) -> tuple[dict, list[int]]:
    python = _datatrove_python()
    if python is None:
        return {"error": f"datatrove is importable neither here nor in {_DTVENV_PYTHON}"}, []
    work = Path(tempfile.mkdtemp(prefix="lmforge-dtbench-"))
    try:
        with open(work / "docs.jsonl", "w") as docs, open(work / "shingles.jsonl", "w") as sh:
            for i, (text, doc_shingles) in enumerate(zip(texts, shingles, strict=True)):
                docs.write(json.dumps({"id": str(i), "text": text}) + "\n")
                sh.write(json.dumps(doc_shingles) + "\n")
        command = [python, __file__, "--datatrove-worker", str(work), "--bands", str(bands)]
        command += ["--rows", str(rows)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=work
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s (raise --timeout)"}, []
        if done.returncode != 0:
            return {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}, []
        report = json.loads(done.stdout.strip().splitlines()[-1])
        cluster_of = [-1] * len(texts)
        for folder in ("kept", "removed"):
            for path in sorted((work / folder).glob("*.jsonl")):
                for line in path.read_text().splitlines():
                    doc = json.loads(line)
                    cluster_of[int(doc["id"])] = doc["metadata"].get("minhash_cluster_id", -1)
        report["docs_per_second"] = round(len(texts) / report["seconds"], 1)
        return report, cluster_of
    finally:
        shutil.rmtree(work, ignore_errors=True)


def datatrove_worker(work: Path, bands: int, rows: int) -> None:
    """Runs inside the datatrove interpreter: the four MinHash stages, timed together."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class PreparedShingles(WordTokenizer):
        """Hands out the shingle list of the next document (stage 1 reads them in order)."""

        def __init__(self, path: Path) -> None:
            super().__init__("xx")
            self.path = path
            self.lines = None  # opened on first use: the executor deep-copies the pipeline

        def word_tokenize(self, text: str) -> list[str]:
            if self.lines is None:
                self.lines = open(self.path)  # noqa: SIM115 - read line by line to the end
            return json.loads(next(self.lines))

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    config = MinhashConfig(n_grams=1, num_buckets=bands, hashes_per_bucket=rows)
    logs = work / "logs"
    reader = JsonlReader(str(work), glob_pattern="docs.jsonl")
    tokenizer = PreparedShingles(work / "shingles.jsonl")
    stages = [
        ([reader, MinhashDedupSignature(str(work / "sigs"), config=config, language=tokenizer)], 1),
        ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], bands),
        (
            [
                MinhashDedupCluster(
                    str(work / "buckets"), str(work / "remove"), config=config, save_cluster_id=True
                )
            ],
            1,
        ),
        (
            [
                JsonlReader(str(work), glob_pattern="docs.jsonl"),
                MinhashDedupFilter(
                    str(work / "remove"),
                    exclusion_writer=JsonlWriter(str(work / "removed"), compression=None),
                    load_cluster_ids=True,
                ),
                JsonlWriter(str(work / "kept"), compression=None),
            ],
            1,
        ),
    ]
    started = time.perf_counter()
    for number, (pipeline, tasks) in enumerate(stages, 1):
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(logs / f"s{number}")
        ).run()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": round(seconds, 2)}))


def memory_mode(docs: int, batch: int, seed: int) -> dict[str, Any]:
    import numpy as np
    from near_dup import make_corpus

    from lmforge.data.minhash import MinHasher, MinHashParams, band_keys, find_clusters

    params = MinHashParams()
    hasher = MinHasher(params)
    sig = np.empty((docs, params.num_perm), dtype=np.uint32)
    keys = np.empty((docs, params.bands), dtype=np.uint64)
    hashing = hashing_cpu = 0.0
    started = time.perf_counter()
    for lo in range(0, docs, batch):
        texts = make_corpus(min(batch, docs - lo), seed + lo).texts  # only this batch in memory
        tick, tick_cpu = time.perf_counter(), time.process_time()
        sig[lo : lo + len(texts)] = hasher.signatures(texts)
        keys[lo : lo + len(texts)] = band_keys(sig[lo : lo + len(texts)], params.bands)
        hashing += time.perf_counter() - tick
        hashing_cpu += time.process_time() - tick_cpu
    generated = time.perf_counter()
    rss_before = _peak_rss_mb()
    cluster_cpu = time.process_time()
    labels = find_clusters(keys, sig, params.threshold)
    clustered = time.perf_counter()
    cluster_cpu = time.process_time() - cluster_cpu
    return {
        "memory_docs": docs,
        "input_bytes_per_doc": sig.itemsize * sig.shape[1] + keys.itemsize * keys.shape[1],
        "signature_docs_per_second": round(docs / hashing, 1),
        "signature_docs_per_cpu_second": round(docs / hashing_cpu, 1),
        "generate_and_hash_seconds": round(generated - started, 1),
        "find_clusters_seconds": round(clustered - generated, 2),
        "find_clusters_cpu_seconds": round(cluster_cpu, 2),
        "peak_rss_mb_before_clustering": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "removed": int(np.count_nonzero(labels != np.arange(docs))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents in the corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=1800, help="datatrove limit, seconds")
    parser.add_argument("--skip", default="", help="comma list of: datasketch,datatrove")
    parser.add_argument("--memory-docs", type=int, default=0, help="measure peak RSS only")
    parser.add_argument("--batch", type=int, default=20_000, help="memory mode: docs per batch")
    parser.add_argument("--datatrove-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bands", type=int, default=14, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.datatrove_worker:
        datatrove_worker(args.datatrove_worker, args.bands, args.rows)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # near_dup beside this file
    if args.memory_docs:
        print(json.dumps(memory_mode(args.memory_docs, args.batch, args.seed)))
        return 0

    from near_dup import jaccard, make_corpus

    from lmforge.data.minhash import MinHashParams
    from lmforge.data.shingles import shingle_strings

    params = MinHashParams()
    corpus = make_corpus(args.docs, args.seed)
    shingles = [shingle_strings(t, params.char_ngram, params.word_ngram) for t in corpus.texts]
    sets = [frozenset(s) for s in shingles]
    planted_true = [(a, b) for a, b, _ in corpus.planted if jaccard(sets[a], sets[b]) >= 0.8]
    skip = set(args.skip.split(","))

    timing, verified, unverified, exact = run_ours(corpus.texts)
    ours = {
        "seconds": timing["seconds"],
        "docs_per_second": round(len(corpus.texts) / timing["seconds"], 1),
        **quality(verified, planted_true, sets),
        "phases": timing,
    }
    ours_unverified = {
        "seconds": timing["seconds_unverified"],
        "docs_per_second": round(len(corpus.texts) / timing["seconds_unverified"], 1),
        **quality(unverified, planted_true, sets),
    }
    ours_exact = {
        "seconds": timing["seconds_exact"],
        "docs_per_second": round(len(corpus.texts) / timing["seconds_exact"], 1),
        **quality(exact, planted_true, sets),
    }
    result: dict[str, Any] = {
        "signature_short_docs": short_doc_speed(corpus.texts),
        "docs": len(corpus.texts),
        "planted_pairs": len(corpus.planted),
        "planted_true_pairs": len(planted_true),
        "num_perm": params.num_perm,
        "bands": params.bands,
        "rows": params.rows,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "ours": ours,
        "ours_unverified": ours_unverified,
        "ours_exact": ours_exact,
    }
    others = {
        "datasketch": lambda: run_datasketch(shingles, params.bands, params.rows),
        "datatrove": lambda: run_datatrove(
            corpus.texts, shingles, params.bands, params.rows, args.timeout
        ),
    }
    for name, run in others.items():
        if name in skip:
            result[name] = {"error": "skipped (--skip)"}
            continue
        report, clusters = run()
        if clusters:
            report.update(quality(clusters, planted_true, sets))
            # speed ratio ours / theirs in docs per second, i.e. their time / our time; the
            # unverified one compares equal semantics (no library here verifies candidates)
            result[f"speed_ratio_ours_vs_{name}"] = round(report["seconds"] / ours["seconds"], 2)
            result[f"speed_ratio_ours_unverified_vs_{name}"] = round(
                report["seconds"] / ours_unverified["seconds"], 2
            )
            result[f"speed_ratio_ours_exact_vs_{name}"] = round(
                report["seconds"] / ours_exact["seconds"], 2
            )
        result[name] = report
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
