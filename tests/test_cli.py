import json
import subprocess
import sys

import pytest

from lmforge.cli import main

COMMANDS = [
    [],
    ["demo"],
    ["run"],
    ["data"],
    ["data", "run"],
    ["data", "clean"],
    ["train"],
    ["compress"],
    ["serve"],
    ["bench"],
    ["report"],
    ["config"],
    ["config", "show"],
    ["config", "schema"],
    ["registry"],
    ["registry", "list"],
    ["registry", "promote"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lmforge")
def test_every_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out


def test_usage_error_is_one_line_with_exit_2(capsys):
    assert main(["demo", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--no-such-flag" in err
    assert len(err.splitlines()) == 1


def test_invalid_override_is_one_line_with_exit_2(capsys):
    assert main(["config", "show", "--set", "train.batch_size=-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.batch_size" in err and len(err.splitlines()) == 1


def test_config_show_prints_resolved_values(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_steps: 7\n")
    assert main(["config", "show", str(cfg), "--set", "bench.concurrency=3"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "concurrency: 3" in out and "d_model: 128" in out


def test_config_schema_is_json_schema(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"data", "train", "compress", "serve", "bench"}


def test_stage_without_its_input_names_the_missing_stage(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "needs the 'data' stage" in err and "lmforge data run CONFIG" in err


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_importing_the_cli_leaves_heavy_modules_out():
    # Every command pays for what `lmforge.cli` imports at startup; `registry list` and
    # `keys create` must not wait for the run config (pydantic), the registry (SQLAlchemy),
    # the server or torch. A fresh interpreter: this test process has them all loaded.
    heavy = (
        "torch",
        "pandas",
        "sklearn",
        "sqlalchemy",
        "yaml",
        "lmforge.config",
        "lmforge.registry",
        "lmforge.serve.server",
        "lmforge.serve.app",
    )
    code = f"import sys, lmforge.cli; print([m for m in {heavy!r} if m in sys.modules])"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_a_file_where_the_run_folder_should_be_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["report", "--workdir", str(blocker)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_registry_promote_moves_the_alias(tmp_path, tiny_registry, capsys):
    from lmforge.registry import ModelRegistry

    reg = ModelRegistry(tiny_registry)
    reg.register("tiny", reg.get("tiny", 1).path)
    assert main(["registry", "promote", "tiny", "2", "--registry", str(tiny_registry)]) == 0
    assert reg.resolve("tiny").version == 2
    assert main(["registry", "promote", "tiny", "9", "--registry", str(tiny_registry)]) == 2
    assert "no version 9" in capsys.readouterr().err


def test_serve_rejects_a_bad_port_in_one_line(tmp_path, tiny_registry, capsys):
    assert main(["serve", "--registry", str(tiny_registry), "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--port" in err and len(err.splitlines()) == 1


def test_registry_register_rollback_and_history(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    reg = str(tmp_path / "reg")
    assert (
        main(
            [
                "registry",
                "register",
                str(folder),
                "--name",
                "clf",
                "--alias",
                "production",
                "--registry",
                reg,
            ]
        )
        == 0
    )
    (folder / "model.safetensors").write_bytes(b"weights-2")
    assert main(["registry", "register", str(folder), "--name", "clf", "--registry", reg]) == 0
    assert main(["registry", "promote", "clf", "2", "--registry", reg]) == 0
    assert main(["registry", "rollback", "clf", "--registry", reg]) == 0
    assert "production v2 -> v1" in capsys.readouterr().out
    assert main(["registry", "history", "clf", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert out.count("production") == 3
    assert main(["registry", "rollback", "clf", "--alias", "canary", "--registry", reg]) == 2
    assert "no alias 'canary'" in capsys.readouterr().err
    assert (
        main(["registry", "register", str(tmp_path / "absent"), "--name", "x", "--registry", reg])
        == 2
    )
