"""The layers' commands reach `qwen3-embed` through entry points (`qwen3_embed.plugins`): the core
names no layer, imports one only when its command is named, and a layer that cannot be loaded
is a one-line error, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_embed import plugins
from qwen3_embed.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    paths = [str(REPO), *([str(extra_path)] if extra_path else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_installed_project_registers_the_layers_commands():
    """What pyproject.toml declares is what the installed metadata holds (after `pip install -e .`)."""
    commands = {name: point.value for name, point in plugins.registered(plugins.COMMANDS).items()}
    assert commands == {
        "embed": "pipelines.cli:add_parser",
        "rerank": "pipelines.rerank_cli:add_parser",
        "serve": "deployments.cli:add_parser",
    }, "stale metadata: rerun `pip install --no-deps -e .`"
    (doctor,) = plugins.registered(plugins.CLUSTER_DOCTOR).values()
    assert callable(plugins.load(doctor))


def test_a_layer_is_imported_only_when_its_command_is_named():
    code = (
        "import sys\n"
        "from qwen3_embed.cli import build_parser\n"
        "def layers():\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ray', 'pydantic', 'pipelines', 'deployments', 'qwen3_embed_layers'))\n"
        "build_parser(['models']); print(layers())\n"
        "build_parser(['embed', 'in', 'out', '--model', 'm']); print(layers())\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    core_only, embed = result.stdout.splitlines()
    assert core_only == "[]"
    assert "'pipelines.cli'" in embed and "deployments" not in embed and "ray" not in embed


def test_help_lists_every_layer_command():
    parser = build_parser(["--help"])
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    assert list(commands.choices) == [
        "models", "make-tiny-model", "doctor", "embed", "rerank", "serve"
    ]  # fmt: skip


def _broken_layer(tmp_path: Path) -> Path:
    """A distribution whose entry point names a module that does not exist (a layer removed,
    or metadata left behind by an old install)."""
    dist = tmp_path / "qwen3_embed_broken_layer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: qwen3-embed-broken-layer\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[qwen3_embed.commands]\nbroken = qwen3_embed_no_such_layer.cli:add_parser\n"
    )
    return tmp_path


def test_a_layer_that_cannot_be_imported_is_a_one_line_error(tmp_path):
    extra = _broken_layer(tmp_path)
    result = _run("import sys; from qwen3_embed.cli import main; sys.exit(main(['broken']))", extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("qwen3-embed: error: 'broken' is registered in 'qwen3_embed.commands'")
    assert "qwen3_embed_no_such_layer.cli:add_parser" in line and "reinstall" in line
    # --help still works, and says why the command is not available; the others are listed.
    result = _run("from qwen3_embed.cli import main; main(['--help'])", extra)
    assert result.returncode == 0, result.stderr
    assert "(not available: 'broken' is registered" in " ".join(result.stdout.split())
    assert "serve" in result.stdout and "embed" in result.stdout


def test_an_install_without_layers_says_so(monkeypatch, capsys):
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "in", "out"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'embed'" in error
    assert "No layer commands are installed" in error and "pip install" in error
    # The core's own commands still run.
    assert main(["models", "--json"]) == 0


def test_doctor_on_a_cluster_without_the_batch_layer_says_so(monkeypatch, capsys):
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    assert main(["doctor", "--address", "127.0.0.1:1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("qwen3-embed doctor: error: doctor --address needs an entry point")
    assert "'qwen3_embed.cluster_doctor'" in error and len(error.splitlines()) == 1
