"""``attachflow scenario``: the commands CI systems use to check and list scenario files.

Side effects: none beyond reading the files (``attachflow.scenario.spec``) and printing.
The main command line registers the group lazily, so the YAML and schema libraries load
only here.
"""

from __future__ import annotations

from pathlib import Path

import click

from attachflow import errors, output
from attachflow.cli_common import boundary

FORMAT = click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]),
                      default="table", show_default=True)
DEBUG = click.option("--debug", is_flag=True, help="Show the trace of an unexpected error.")


@click.group()
def scenario():
    """Declared runs of attach, detach, migration and faults, for CI (scenario files).

    \b
      attachflow scenario validate scenarios/*.yaml   check every file, run nothing
      attachflow scenario list scenarios/*.yaml       what each file would run

    A file is one suite of scenarios: volumes, guests and steps (boot, attach, detach,
    write, verify, migrate, delete, fault, expect, expect_failure, repeat). With no FILE,
    the YAML files of ./scenarios are read.
    """


def _files(paths: tuple[str, ...]) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    found = sorted(Path("scenarios").glob("*.yaml"))
    if not found:
        raise errors.InputError("no FILE given and no ./scenarios/*.yaml here")
    return found


def _load_all(paths: tuple[str, ...]):
    """Every file's suite; every mistake of every file printed, then one error."""
    from attachflow.scenario import spec
    suites, problems = [], []
    files = _files(paths)
    for path in files:
        try:
            suites.append(spec.load(path))
        except spec.ScenarioFileError as exc:
            problems.extend(exc.problems)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        bad = len(files) - len(suites)
        raise errors.InputError(
            f"{len(problems)} mistake{'s' * (len(problems) != 1)} in {bad} of "
            f"{len(files)} file{'s' * (len(files) != 1)}; nothing was run")
    return suites


@scenario.command("validate")
@click.argument("files", nargs=-1, metavar="[FILE]...")
@FORMAT
@DEBUG
@boundary
def validate_command(files, fmt, debug):
    """Check scenario files against the format, run nothing.

    Each mistake is printed as FILE:LINE: WHERE: WHAT (an unknown step or key with the
    nearest valid one, a missing argument, a volume or guest no declaration names, a
    fault outside the fixed set); the exit code is 2 when there is any.
    """
    from attachflow.scenario import spec
    rows = [{"file": str(s.path), "suite": s.name, "scenarios": len(s.scenarios),
             "steps": sum(spec.count_steps(sc.steps) for sc in s.scenarios),
             "result": "valid"} for s in _load_all(files)]
    output.emit(rows, fmt)


@scenario.command("list")
@click.argument("files", nargs=-1, metavar="[FILE]...")
@FORMAT
@DEBUG
@boundary
def list_command(files, fmt, debug):
    """Each scenario the files would run: one per combination of its matrix (storage
    API, transport), with its steps counted as they run (repeats unrolled)."""
    from attachflow.scenario import spec
    rows = [{"suite": s.name, "scenario": sc.name, "api": sc.api,
             "transport": sc.transport, "kernel_nodes": sc.kernel_nodes,
             "steps": spec.count_steps(sc.steps), "where": sc.where,
             "description": sc.description}
            for s in _load_all(files) for sc in s.scenarios]
    output.emit(rows, fmt)
