from pathlib import Path

import pytest
import yaml

from lmforge.config import load_config
from lmforge.presets import DEMO, DEMO_QUICK

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert Path(cfg.workdir).is_absolute()


@pytest.mark.parametrize(("name", "preset"), [("demo.yaml", DEMO), ("demo-quick.yaml", DEMO_QUICK)])
def test_demo_configs_mirror_the_builtin_presets(name, preset):
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())
    shipped.pop("workdir")
    expected = {k: v for k, v in preset.items() if k != "workdir"}
    assert shipped == expected
