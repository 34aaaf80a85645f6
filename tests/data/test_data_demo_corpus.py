"""The cleaning line on the generated demo corpus: the quality targets of docs/demo-corpus.md."""

import pytest
from rich.console import Console

from lmforge.config import CorpusConfig, load_config
from lmforge.data import stage
from lmforge.workspace import Workspace

demo = pytest.importorskip("lmforge.demo")

# Near duplicates are left to the later near-dedup step, so some noise stays.
MAX_NOISE_AFTER = 0.12
MAX_CLEAN_LOST = 0.03
MOSTLY_FIXED = ("exact_duplicate", "pii", "too_short", "spam", "html_junk", "mojibake")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The data stage with no sources configured: it reads the run's generated corpus."""
    root = tmp_path_factory.mktemp("demo")
    cfg = load_config(base={"workdir": str(root / "run")})
    ws = Workspace(cfg.workdir)
    demo.generate_corpus(ws.stage_dir("corpus"), CorpusConfig(docs=2000, noise_rate=0.37, seed=3))
    result = stage.run(cfg, ws, Console(quiet=True))
    stats = (ws.stage_dir("data") / "stats.json").read_text(encoding="utf-8")
    return result.summary, stats


def test_noise_is_mostly_removed_without_losing_clean_documents(demo_run):
    summary, _ = demo_run
    assert summary["docs_in"] >= 2000
    assert summary["noise_rate_before"] == pytest.approx(0.37, abs=0.02)
    assert summary["noise_rate_after"] <= MAX_NOISE_AFTER
    assert summary["clean_docs_lost_rate"] <= MAX_CLEAN_LOST


@pytest.mark.parametrize("kind", MOSTLY_FIXED)
def test_each_handled_noise_kind_is_mostly_fixed(demo_run, kind):
    breakdown = demo_run[0]["noise_kinds"][kind]
    assert breakdown["docs"] > 0
    assert breakdown["handled_rate"] >= 0.9, breakdown


def test_summary_reports_pii_and_languages(demo_run):
    summary, _ = demo_run
    assert all(summary["pii"][t] > 0 for t in ("EMAIL", "PHONE", "ID_CN", "BANK_CARD", "IP"))
    assert set(summary["languages"]) == {"zh", "en"}
