from pathlib import Path

import pytest

from lmforge.config import RunConfig, apply_overrides, load_config
from lmforge.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_fill_every_section(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 0.002\n"))
    assert cfg.train.lr == 0.002
    assert cfg.train.batch_size == RunConfig().train.batch_size
    assert cfg.serve.host == "127.0.0.1"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_config(
        write(tmp_path, "workdir: out\ndata:\n  sources:\n    - path: in/posts.jsonl\n")
    )
    assert cfg.workdir == str(tmp_path / "out")
    assert cfg.data.sources[0].path == str(tmp_path / "in" / "posts.jsonl")


def test_unknown_key_names_the_dotted_path_and_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "train:\n  model:\n    layers: 3\n"))
    message = str(err.value)
    assert "train.model.layers" in message
    assert "n_layers" in message
    assert "\n" not in message


def test_wrong_type_names_field_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'many'"):
        load_config(write(tmp_path, "train:\n  batch_size: many\n"))


def test_choice_lists_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.precision.*'fp32'.*'bf16'"):
        load_config(write(tmp_path, "train:\n  precision: fp8\n"))


def test_cross_field_rule_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["train.model.d_model=100", "train.model.n_heads=3"])


def test_set_overrides_parse_yaml_values():
    cfg = load_config(
        None,
        ["train.lr=3e-4", "train.model.n_layers=4", "data.languages=[zh]", "corpus.docs=500"],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.model.n_layers == 4
    assert cfg.data.languages == ["zh"]
    assert cfg.corpus is not None and cfg.corpus.docs == 500


@pytest.mark.parametrize("bad", ["train.lr", "=3"])
def test_malformed_overrides_are_clear_errors(bad):
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, [bad])


def test_override_cannot_descend_into_a_value():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=1"])


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(write(tmp_path, "train: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_section_hash_changes_only_with_its_section():
    a = load_config(None, ["train.lr=0.001"])
    b = load_config(None, ["train.lr=0.002"])
    assert a.section_hash("train") != b.section_hash("train")
    assert a.section_hash("data") == b.section_hash("data")


def test_set_paths_resolve_against_the_current_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    config = folder / "run.yaml"
    config.write_text("workdir: from-file\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(config).workdir == str(folder / "from-file")
    assert load_config(config, ["workdir=runs/mine"]).workdir == str(tmp_path / "runs" / "mine")
    home = load_config(config, ["workdir=~/x"]).workdir
    assert not home.startswith("~") and home.endswith("/x")


def test_empty_workdir_is_refused():
    with pytest.raises(ConfigError, match="workdir"):
        load_config(None, ["workdir="])


def test_non_utf8_config_is_a_clear_error(tmp_path):
    path = tmp_path / "gbk.yaml"
    path.write_bytes("train:\n  model_name: 模型\n".encode("gbk"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
