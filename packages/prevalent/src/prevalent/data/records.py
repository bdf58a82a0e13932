"""Reading a JSON list of task records and reporting bad ones by index (shared by the loaders)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dgm_core.errors import UserError

#: at most this many bad records are listed in one error message
MAX_REPORTED = 5


def read_json_list(path: str | Path, kind: str) -> list:
    """Parse ``path`` as a JSON list; :class:`UserError` for a missing file, bad JSON or a non-list."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind} file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: malformed JSON ({err})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: a {kind} file is a JSON list of records, found {type(data).__name__}")
    return data


def require(record: Any, fields: dict[str, type | tuple[type, ...]]) -> list[str]:
    """Problems of one record: not an object, missing fields, fields of the wrong type."""
    if not isinstance(record, dict):
        return [f"is a {type(record).__name__}, not an object"]
    problems = []
    for name, types in fields.items():
        allowed = types if isinstance(types, tuple) else (types,)
        value = record.get(name)
        if name not in record:
            problems.append(f"missing field {name!r}")
        elif not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            problems.append(f"field {name!r} has type {type(value).__name__}")
    return problems


def parse_records(path: str | Path, kind: str, parse: Callable[[int, dict], list]) -> list:
    """Apply ``parse(index, record) → episodes`` to every record, collecting failures by index.

    ``parse`` raises ``ValueError`` with a short reason for a bad record. All bad records are counted
    and the first :data:`MAX_REPORTED` listed in one :class:`UserError`, so one run shows what to fix.
    """
    records = read_json_list(path, kind)
    episodes: list = []
    bad: list[str] = []
    for index, record in enumerate(records):
        try:
            episodes.extend(parse(index, record))
        except (ValueError, TypeError, KeyError) as err:
            bad.append(f"record {index}: {err}")
    if bad:
        shown = "; ".join(bad[:MAX_REPORTED])
        more = f" (and {len(bad) - MAX_REPORTED} more)" if len(bad) > MAX_REPORTED else ""
        raise UserError(f"{path}: {len(bad)} bad {kind} record(s): {shown}{more}")
    return episodes


def check(record: Any, fields: dict[str, type | tuple[type, ...]]) -> None:
    """Raise ``ValueError`` listing the record's problems (see :func:`require`)."""
    problems = require(record, fields)
    if problems:
        raise ValueError(", ".join(problems))


def check_path(value: Any, name: str) -> list[str]:
    """A path is a non-empty list of viewpoint-id strings."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {name!r} must be a non-empty list of viewpoint ids")
    return list(value)
