from pathlib import Path

import pytest
import yaml

from lmforge.config import load_config
from lmforge.presets import DEMO, DEMO_QUICK
from lmforge.train.launch import check_layout
from lmforge.train.run_config import is_run_config, load_run_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if is_run_config(path):  # a training-run config for `lmforge train --nproc N`
        cfg = load_run_config(path)
        assert check_layout(cfg, 1).world_size == 1
        return
    cfg = load_config(path)
    assert Path(cfg.workdir).is_absolute()


@pytest.mark.parametrize(("name", "preset"), [("demo.yaml", DEMO), ("demo-quick.yaml", DEMO_QUICK)])
def test_demo_configs_mirror_the_builtin_presets(name, preset):
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())
    shipped.pop("workdir")
    expected = {k: v for k, v in preset.items() if k != "workdir"}
    assert shipped == expected
