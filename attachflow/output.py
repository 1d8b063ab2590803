"""How the command line prints results, in the OpenStack client's conventions.

``-f table`` (a Field/Value table for one result, a column table for a list), ``json``
(one document), ``yaml``, ``value`` (bare values: one per line for one result, one row
per line for a list, as ``openstack ... -f value`` does), and ``-c COLUMN`` (repeatable)
to keep only those columns, in that order. The side effect owned here is writing to
stdout.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import click

from attachflow import errors

FORMATS = ("table", "json", "yaml", "value")


def select(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
           known: Sequence[str]) -> list[dict[str, Any]]:
    """The rows with only ``columns`` (all when none is asked), in the asked order."""
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise errors.InputError(f"unknown column '{unknown[0]}'; columns: {', '.join(known)}")
    keep = list(columns) or list(known)
    return [{c: row.get(c) for c in keep} for row in rows]


def emit(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], fmt: str,
         columns: Sequence[str] = ()) -> None:
    """Print one result (a mapping) or a list of rows in ``fmt``."""
    single = isinstance(data, Mapping)
    rows = [data] if single else list(data)
    known = list(rows[0]) if rows else list(columns)
    picked = select(rows, columns, known)
    if fmt == "json":
        click.echo(json.dumps(picked[0] if single else picked, indent=2, sort_keys=not columns,
                              default=str))
    elif fmt == "yaml":
        import yaml
        click.echo(yaml.safe_dump(_plain(picked[0] if single else picked),
                                  sort_keys=not columns, default_flow_style=False), nl=False)
    elif fmt == "value":
        for row in picked:
            values = [_cell(v) for v in row.values()]
            if single:
                for value in values:
                    click.echo(value)
            else:
                click.echo(" ".join(values))
    elif single:
        _field_value_table(picked[0])
    else:
        _column_table(picked, list(columns) or known)


def _plain(value: Any) -> Any:
    """JSON-compatible values only (yaml.safe_dump refuses other types)."""
    return json.loads(json.dumps(value, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _rule(widths: Sequence[int]) -> str:
    return "+" + "+".join("-" * (w + 2) for w in widths) + "+"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "|" + "|".join(f" {c.ljust(w)} " for c, w in zip(cells, widths)) + "|"


def _field_value_table(row: Mapping[str, Any]) -> None:
    _column_table([{"Field": k, "Value": _cell(v)} for k, v in row.items()],
                  ["Field", "Value"])


def _column_table(rows: Sequence[Mapping[str, Any]], headers: Sequence[str]) -> None:
    cells = [[_cell(row.get(h)) for h in headers] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo(_rule(widths))
    click.echo(_line(headers, widths))
    click.echo(_rule(widths))
    for r in cells:
        click.echo(_line(r, widths))
    click.echo(_rule(widths))
