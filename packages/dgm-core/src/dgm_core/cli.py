"""One small layer that turns a dataclass into a command line, shared by every dgm CLI.

A CLI declares its options as a dataclass whose fields carry help text::

    @dataclass
    class SampleConfig(RuntimeConfig):
        checkpoint: str = option("runs/demo", help="Run directory or checkpoint to sample from.")
        num_samples: int = option(64, help="How many images to draw.")

    def main(argv: list[str] | None = None) -> int:
        return cli.run(sample, SampleConfig, argv, prog="fqgan-sample", module="fqgan.sample")

Values are resolved in this order, each overriding the one before: the dataclass
defaults, ``--preset NAME``, ``--config FILE`` (TOML or JSON), then explicit flags.
Unknown flags or config keys, and values of the wrong type, are one-line errors.

``--nproc-per-node N`` (and torchrun's multi-node flags) make the CLI relaunch
itself through ``torch.distributed.run`` as ``python -m <module>``; a process
already started by torchrun just runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from dgm_core.errors import UserError

C = TypeVar("C")

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str,
    choices: Sequence[Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
    metavar: str | None = None,
    hidden: bool = False,
) -> Any:
    """A dataclass field that is also a documented command-line option (``hidden``: left out of --help)."""
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "metavar": metavar,
        "hidden": hidden,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and calling sys.exit.

    Abbreviations are off: with them ``--max 3`` would silently mean ``--max-restarts 3``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(message)


# --------------------------------------------------------------------------- types


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check/convert one value (from a config file or a flag string) to the field's type."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"option '{name}' may not be null")
    origin = typing.get_origin(inner)
    if origin is Literal:
        allowed = typing.get_args(inner)
        if value not in allowed:
            raise UserError(f"option '{name}': {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(inner)
        item_type = args[0] if args else str
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"option '{name}' expects a list, got {value!r}")
        items = [_coerce(v, item_type, name) for v in value]
        return tuple(items) if origin is tuple else items
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise UserError(f"option '{name}' expects true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"option '{name}' expects an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"option '{name}' expects an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"option '{name}' expects a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise UserError(f"option '{name}' expects a number, got {value!r}") from None
    if inner is str:
        if not isinstance(value, str):
            raise UserError(f"option '{name}' expects a string, got {value!r}")
        return value
    raise TypeError(f"dgm_core.cli cannot handle the type {tp!r} of option '{name}'")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _validate(name: str, value: Any, field: dataclasses.Field) -> Any:
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"option '{name}': {value!r} is not one of {', '.join(map(str, choices))}")
    return value


# --------------------------------------------------------------------------- config files


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML or JSON config file into a flat dict (dashes in keys become underscores)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise UserError("TOML config files need Python 3.11+ (or tomli); use JSON") from None
            data = tomllib.loads(text.decode("utf-8"))
        elif path.suffix.lower() == ".json":
            data = json.loads(text.decode("utf-8"))
        else:
            raise UserError(f"config file {path} must end in .toml or .json")
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"config file {path} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table/object of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_from_dict(cls: type[C], values: Mapping[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict, type-checking every value; unknown keys are errors."""
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {source}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        field, tp = fields[name]
        kwargs[name] = _validate(name, _coerce(value, tp, name), field)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field without a value
        raise UserError(f"{source}: {error}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def command_line(prog: str, cfg: Any) -> str:
    """The shell command that rebuilds ``cfg``: ``prog`` and a flag for every non-default option.

    Result files record it, so a reader can run exactly what made a table.
    """
    words = [prog]
    for name, (field, tp) in _fields(type(cfg)).items():
        value = getattr(cfg, name)
        if field.default_factory is not _MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        else:
            default = field.default
        if value == default or value is None:
            continue
        inner, _ = _unwrap_optional(tp)
        if inner is bool:
            words.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            words += [_flag(name), *map(str, value)]
        elif str(value).startswith("-"):  # argparse would read "--x" after a space as a flag
            words.append(f"{_flag(name)}={value}")
        else:
            words += [_flag(name), str(value)]
    return shlex.join(words)


# --------------------------------------------------------------------------- parser


LAUNCH_FLAGS = (
    (
        "nproc_per_node",
        str,
        None,
        "Processes per node: N, or auto/gpu/cpu as torchrun reads them; more than one relaunches this "
        "command under torchrun (DDP).",
    ),
    ("nnodes", str, None, "Number of nodes, or MIN:MAX for elastic runs (torchrun --nnodes)."),
    ("node_rank", int, None, "This node's rank in a multi-node run (torchrun --node-rank)."),
    ("master_addr", str, None, "Address of the rank-0 node (torchrun --master-addr)."),
    ("master_port", int, None, "Port of the rank-0 node (torchrun --master-port)."),
    ("rdzv_backend", str, None, "Rendezvous backend, e.g. c10d (torchrun --rdzv-backend)."),
    ("rdzv_endpoint", str, None, "Rendezvous host:port (torchrun --rdzv-endpoint)."),
    ("rdzv_id", str, None, "Rendezvous job id (torchrun --rdzv-id)."),
    ("max_restarts", int, None, "Restart all workers up to this many times after a failure (torchrun)."),
)


def _launch_parser() -> argparse.ArgumentParser:
    parser = _Parser(add_help=False)
    group = parser.add_argument_group("distributed launch (torchrun)")
    for name, tp, default, help_text in LAUNCH_FLAGS:
        group.add_argument(_flag(name), dest=name, type=tp, default=default, help=help_text)
    return parser


def build_parser(
    cls: type,
    *,
    prog: str,
    description: str | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    launchable: bool = False,
) -> argparse.ArgumentParser:
    """The argparse parser of a config dataclass (defaults suppressed, to know what was given)."""
    parents = [_launch_parser()] if launchable else []
    parser = _Parser(
        prog=prog,
        description=description,
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML or JSON file of option defaults (flags override)."
    )
    if presets:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            help="Named set of option values, applied before --config and flags.",
        )
    for name, (field, tp) in _fields(cls).items():
        inner, _ = _unwrap_optional(tp)
        default = field.default if field.default is not _MISSING else None
        if field.default_factory is not _MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        help_text = field.metadata.get("help", "")
        if default is not None and default != "":
            help_text += f" (default: {default})"
        if field.metadata.get("hidden"):
            help_text = argparse.SUPPRESS
        kwargs: dict[str, Any] = {"help": help_text, "dest": name}
        choices = field.metadata.get("choices")
        if typing.get_origin(inner) is Literal:
            choices = typing.get_args(inner)
        if inner is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if choices:
            kwargs["choices"] = choices
        if typing.get_origin(inner) in (list, tuple):
            kwargs["nargs"] = "*"
        kwargs["metavar"] = field.metadata.get("metavar") or (None if choices else name.upper())
        parser.add_argument(_flag(name), **kwargs)
    return parser


def parse_config(
    cls: type[C],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> C:
    """Resolve defaults ← preset ← config file ← flags into an instance of ``cls``."""
    parser = build_parser(cls, prog=prog, description=description, presets=presets)
    namespace = vars(parser.parse_args(list(argv) if argv is not None else None))
    return _resolve(cls, namespace, presets)


def _resolve(cls: type[C], namespace: dict[str, Any], presets: Mapping[str, Mapping[str, Any]] | None) -> C:
    values: dict[str, Any] = {}
    preset = namespace.pop("preset", None)
    if preset is not None:
        values.update({k.replace("-", "_"): v for k, v in presets[preset].items()})  # type: ignore[index]
    config_file = namespace.pop("config", None)
    if config_file is not None:
        values.update(load_config_file(config_file))
    for name, _, _, _ in LAUNCH_FLAGS:
        namespace.pop(name, None)
    values.update(namespace)
    return config_from_dict(cls, values, source=f"--config {config_file}" if config_file else "options")


# --------------------------------------------------------------------------- launching


def under_torchrun() -> bool:
    """True inside a worker started by torchrun (or any launcher that sets its variables)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _many_processes(nproc_per_node: str | None) -> bool:
    """Whether ``--nproc-per-node`` asks for a launch: N > 1, or auto/gpu/cpu (torchrun counts them)."""
    if nproc_per_node is None:
        return False
    if nproc_per_node.isdigit():
        if int(nproc_per_node) < 1:
            raise UserError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
        return int(nproc_per_node) > 1
    if nproc_per_node in ("auto", "gpu", "cpu"):
        return True
    raise UserError(f"--nproc-per-node expects a number, auto, gpu or cpu, got {nproc_per_node!r}")


def run_forwarding_signals(command: Sequence[str]) -> int:
    """Run the launcher as a child and pass SIGTERM/SIGINT on to it; return its exit status.

    A scheduler stopping the job reaches torchrun, which stops its workers (they checkpoint on
    SIGTERM), so nothing is orphaned. torchrun itself reports a stop by signal as a failure
    (status 1); after a forwarded signal the status is 128 + the signal number instead, as for
    a process the signal ended (143 for SIGTERM, the workers' own status on preemption).
    """
    child = subprocess.Popen(list(command))
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received and status != 0:
        return 128 + received[0]
    return status


def torchrun_command(launch: argparse.Namespace, module: str, argv: Sequence[str]) -> list[str]:
    """The ``python -m torch.distributed.run ... -m module argv`` command for the launch flags given."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    multi_node = launch.nnodes not in (None, "1") or launch.rdzv_endpoint or launch.master_addr
    if not multi_node:
        # One node: let torchrun pick a free port, so parallel runs never collide.
        cmd.append("--standalone")
    for name, _, _, _ in LAUNCH_FLAGS:
        value = getattr(launch, name)
        if value is not None:
            cmd += [_flag(name), str(value)]
    if launch.nproc_per_node is None:
        cmd += ["--nproc-per-node", "1"]
    return [*cmd, "-m", module, *argv]


def run(
    fn: Callable[[C], Any],
    cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    module: str | None = None,
) -> int:
    """Parse ``argv`` into ``cls``, then call ``fn(config)``; the body of every CLI's ``main``.

    With ``module`` given the CLI is launchable: torchrun flags are accepted and,
    outside torchrun, ``--nproc-per-node N`` (N > 1) or multi-node flags relaunch
    ``python -m module`` under ``torch.distributed.run``. Returns the exit status:
    0 on success, 2 for a :class:`UserError` (printed as one line), or the
    launcher's status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        launchable = module is not None
        rest = argv
        launch = None
        if launchable:
            launch, rest = _launch_parser().parse_known_args(argv)
        parser = build_parser(cls, prog=prog, description=description, presets=presets, launchable=launchable)
        namespace = vars(parser.parse_args(rest))
        cfg = _resolve(cls, namespace, presets)
        wants_launch = launch is not None and (
            _many_processes(launch.nproc_per_node)
            or launch.nnodes not in (None, "1")
            or launch.max_restarts is not None
        )
        if wants_launch and not under_torchrun():
            command = torchrun_command(launch, module, rest)  # type: ignore[arg-type]
            return run_forwarding_signals(command)
        result = fn(cfg)
        return result if isinstance(result, int) else 0
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_request:  # --help, or a CLI that exits on purpose
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
