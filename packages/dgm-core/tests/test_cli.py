"""The dataclass → argparse layer: types, precedence, files, presets and one-line errors."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

import pytest

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError


@dataclass
class ExampleConfig:
    name: str = option("base", help="A name.")
    count: int = option(3, help="A count.")
    rate: float = option(0.5, help="A rate.")
    enabled: bool = option(False, help="A switch.")
    mode: str = option("fast", help="A mode.", choices=("fast", "exact"))
    layers: list[int] = option(default_factory=lambda: [0, 1], help="Layer indices.")
    limit: int | None = option(None, help="Optional limit.")


PRESETS = {"big": {"count": 30, "mode": "exact"}}


def parse(argv, presets=PRESETS):
    return cli.parse_config(ExampleConfig, argv, prog="example", presets=presets)


def test_defaults_come_from_the_dataclass():
    assert parse([]) == ExampleConfig()


def test_flags_are_typed_and_dashed():
    cfg = parse(
        [
            "--count",
            "7",
            "--rate",
            "1e-3",
            "--enabled",
            "--mode",
            "exact",
            "--layers",
            "2",
            "3",
            "--limit",
            "9",
        ]
    )
    assert (cfg.count, cfg.rate, cfg.enabled, cfg.mode, cfg.layers, cfg.limit) == (
        7,
        1e-3,
        True,
        "exact",
        [2, 3],
        9,
    )
    assert parse(["--enabled", "--no-enabled"]).enabled is False


def test_precedence_is_defaults_then_preset_then_file_then_flags(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('count = 40\nname = "from-file"\n')
    cfg = parse(["--preset", "big", "--config", str(config), "--name", "from-flag"])
    assert cfg.mode == "exact"  # preset
    assert cfg.count == 40  # file beats preset
    assert cfg.name == "from-flag"  # flag beats file


def test_json_config_with_dashed_keys(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"count": 5, "layers": [4], "enabled": True}))
    cfg = parse(["--config", str(config)])
    assert (cfg.count, cfg.layers, cfg.enabled) == (5, [4], True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("cuont = 4\n", "unknown key(s) 'cuont'"),
        ('count = "many"\n', "expects an integer"),
        ('mode = "slow"\n', "not one of fast, exact"),
        ("enabled = 3\n", "expects true or false"),
        ("count = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_clear_errors(tmp_path, content, message):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(["--config", str(config)])


def test_unknown_flag_and_bad_value_are_user_errors():
    with pytest.raises(UserError, match="unrecognized arguments: --cuont"):
        parse(["--cuont", "3"])
    with pytest.raises(UserError, match="invalid choice"):
        parse(["--mode", "slow"])
    with pytest.raises(UserError, match="expects an integer"):
        parse(["--count", "three"])


def _echo(cfg: ExampleConfig) -> int:
    print(f"count={cfg.count}")
    return 0


def test_run_prints_one_line_errors_and_returns_2(capsys):
    status = cli.run(_echo, ExampleConfig, ["--count", "x"], prog="example")
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("example: error:") and "Traceback" not in err


def test_run_help_documents_every_option(capsys):
    status = cli.run(_echo, ExampleConfig, ["--help"], prog="example", presets=PRESETS, module="example_mod")
    out = capsys.readouterr().out
    assert status == 0
    for flag in (
        "--count",
        "--rate",
        "--enabled",
        "--mode",
        "--layers",
        "--config",
        "--preset",
        "--nproc-per-node",
    ):
        assert flag in out
    assert "A count. (default: 3)" in out


def test_torchrun_command_for_one_node_is_standalone():
    launch, rest = cli._launch_parser().parse_known_args(["--nproc-per-node", "2", "--count", "4"])
    command = cli.torchrun_command(launch, "pkg.train", rest)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert command[-4:] == ["-m", "pkg.train", "--count", "4"]
    assert "--nproc-per-node" in command and "2" in command


def test_config_from_dict_rebuilds_a_saved_config():
    saved = cli.config_to_dict(ExampleConfig(count=11, layers=[5]))
    assert cli.config_from_dict(ExampleConfig, saved) == ExampleConfig(count=11, layers=[5])


def test_command_line_rebuilds_the_config():
    cfg = ExampleConfig(name="--two words", count=7, enabled=True, layers=[4, 5], limit=2)
    line = cli.command_line("example", cfg)
    assert line.startswith("example ") and "--rate" not in line  # defaults are left out
    assert parse(shlex.split(line)[1:]) == cfg
    assert cli.command_line("example", ExampleConfig()) == "example"
    switched_off = cli.command_line("example", ExampleConfig(enabled=False, layers=[]))
    assert parse(shlex.split(switched_off)[1:]) == ExampleConfig(layers=[])
