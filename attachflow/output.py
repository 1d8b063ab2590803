"""How the command line prints results, in the OpenStack client's conventions.

``-f table`` (a Field/Value table for one result, a column table for a list), ``json``
(one document), ``yaml``, ``value`` (bare values: one per line for one result, one row
per line for a list, as ``openstack ... -f value`` does), and ``-c COLUMN`` (repeatable)
to keep only those columns, in that order; and the commands' own renderings (a migration's
plan, recover's outcomes, the lab's status, a migration's progress). The side effect owned
here is writing results to stdout and progress to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Mapping, Sequence

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


# -- the commands' renderings ----------------------------------------------------------------
LIST_COLUMNS = ("domain", "volume_id", "device", "transport", "attachment_id",
                "volume_status", "problem")

OPERATION_COLUMNS = ("id", "kind", "state", "host", "destination", "domain", "volumes",
                     "started", "step")


def _wide(fmt: str) -> bool:
    """Documents carry every field; tables and values the main ones."""
    return fmt in ("json", "yaml")


def volumes(rows: Sequence[Mapping[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    """``attachflow list``: one row per volume attached, per guest."""
    emit(rows, fmt, columns or (() if _wide(fmt) else LIST_COLUMNS))


def operations(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    """``attachflow operations``: the journal's operations; a table shortens ids."""
    if not _wide(fmt):
        for row in rows:
            row["id"], row["volumes"] = row["id"][:8], " ".join(row["volumes"])
            row["destination"] = row["destination"] or ""
    emit(rows, fmt, columns or (() if _wide(fmt) else OPERATION_COLUMNS))


def migration_preview(preview: Mapping[str, Any], fmt: str, columns: Sequence[str]) -> None:
    """``migrate --dry-run``: the plan's steps and the domain XML change."""
    if fmt == "table":
        for step in preview["steps"]:
            click.echo(f"- {step}")
        click.echo(preview["xml_diff"], nl=False)
    else:
        emit(preview, fmt, columns)


def recover_results(results: Sequence[Any], fmt: str, columns: Sequence[str],
                    dry_run: bool) -> None:
    """``attachflow recover``: what was (or would be) done to each operation."""
    if fmt == "table":
        if not results:
            click.echo("nothing to recover")
        for res in results:
            click.echo(("would: " if dry_run and not res.needs_human else "")
                       + res.describe())
    else:
        emit([r.to_dict() for r in results], fmt, columns)


def progress_printer(kind: str) -> Callable[[Any], None] | None:
    """Migration progress on stderr: a bar, JSON lines, or nothing."""
    from attachflow.events import MigrationProgress
    if kind == "json":
        def json_lines(event):
            if isinstance(event, MigrationProgress):
                click.echo(json.dumps(event.to_dict(), sort_keys=True), err=True)
        return json_lines
    if kind == "none" or (kind == "auto" and not sys.stderr.isatty()):
        return None

    def bar(event):
        if not isinstance(event, MigrationProgress):
            return
        filled = int(event.fraction * 30)
        click.echo(f"\r[{'#' * filled}{'.' * (30 - filled)}] {event.fraction * 100:5.1f}%  "
                   f"{event.processed / 2**20:8.1f} MiB sent  "
                   f"{event.remaining / 2**20:8.1f} MiB left  {event.elapsed:6.1f} s",
                   nl=False, err=True)
    return bar


def end_progress(kind: str, printer: Callable[[Any], None] | None) -> None:
    """End the progress bar's line, so that what follows starts on a line of its own."""
    if printer is not None and kind != "json":
        click.echo("", err=True)


def lab_status(status: Mapping[str, Any], fmt: str) -> None:
    """``attachflow lab up|status``: the lab, then each component and its processes."""
    if fmt == "json":
        emit(status, "json")
        return
    sup = status.get("supervisor") or {}
    click.echo(f"lab {status.get('state', '?')}  ({status.get('auth', '?')}; "
               f"{status.get('state_dir', '')}; "
               f"{sup.get('processes', 0)} processes, supervisord pid {sup.get('pid')})")
    click.echo(f"  {'COMPONENT':<18} {'STATE':<9} {'READY':>6} {'PID':>7} {'PROCS':>5}  ADDRESS")
    for name, comp in (status.get("components") or {}).items():
        ready = comp.get("ready_seconds")
        click.echo(f"  {name:<18} {comp.get('state', '?'):<9} "
                   f"{'' if ready is None else f'{ready:.1f}s':>6} "
                   f"{comp.get('pid') or '-':>7} {comp.get('processes', 0):>5}  "
                   f"{comp.get('address') or ''}")
        for sub, info in comp.items():
            if isinstance(info, dict) and "state" in info:
                click.echo(f"    {sub:<15} {info['state']:<9} pid {info.get('pid')}")
        if comp.get("error"):
            click.echo(f"    error: {comp['error']}")
