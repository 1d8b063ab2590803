"""``attachflow scenario``: the commands CI systems use to check and list scenario files.

Side effects: none beyond reading the files (``attachflow.scenario.spec``) and printing.
The main command line registers the group lazily, so the YAML and schema libraries load
only here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
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
      attachflow scenario run scenarios/*.yaml --junit results.xml

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


@scenario.command("run")
@click.argument("files", nargs=-1, metavar="[FILE]...")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), metavar="OUT.xml",
              help="Write the results as JUnit XML (one testsuite per file, one testcase "
                   "per scenario).")
@click.option("--keep-going", is_flag=True,
              help="Run every scenario even after one did not pass.")
@click.option("--kernel-nodes", is_flag=True,
              help="Also run the scenarios that need the compute-node VMs (attachflow lab "
                   "up --kernel-nodes); without it they are reported as skipped.")
@click.option("--only", multiple=True, metavar="NAME",
              help="Run only the scenarios whose name, or SUITE/NAME, starts with NAME "
                   "(repeatable).")
@FORMAT
@DEBUG
@boundary
def run_command(files, junit_path, keep_going, kernel_nodes, only, fmt, debug):
    """Run scenario files on the compute hosts of the hosts file and the cloud of
    clouds.yaml (the settings of every other command).

    Every file is checked first: one mistake anywhere and nothing runs. Then each
    scenario runs in order: its volumes created, its steps one by one (a progress line
    each on stderr, with its time), and everything it made removed at its end, when a
    step fails, and on Ctrl-C or SIGTERM; what could not be removed is listed with the
    command that removes it. Names carry a run id, so two runs on one lab never meet.

    \b
    Exit codes: 0 every scenario passed (or was skipped for a stated reason), 1 one did
    not, 2 a file has a mistake, 130 the run was interrupted (after its clean-up).
    On the attachflow lab the steps also check where the bytes land (the file tgtd
    exports), tgtd's sessions, and can stop the lab's storage API.
    """
    from attachflow.scenario import session
    suites = session.selected(_load_all(files), only)
    if not any(s.scenarios for s in suites):
        raise errors.InputError(f"no scenario's name starts with {' or '.join(only)}")
    with _actions() as actions:
        report = _run_reporting(suites, actions, kernel_nodes, keep_going)
    if junit_path:
        from attachflow.scenario import junit
        junit.write(junit_path, report.suites)
    _show(report, fmt)
    if report.interrupted:
        click.echo(f"attachflow: interrupted; {report.summary()}; everything the running "
                   "scenario made was removed, or is listed above", err=True)
        sys.exit(130)
    if not report.passed:
        raise errors.AttachflowError(f"{report.summary()}")


@contextlib.contextmanager
def _actions():
    """The steps' actions: the lab's when the hosts file is the attachflow lab's, else
    those of any two-node lab."""
    from attachflow import hosts
    from attachflow.client import Client
    virt_type = os.environ.get("ATTACHFLOW_VIRT_TYPE", "kvm")
    with Client() as client:
        if _is_the_lab(hosts.hosts_file_path()):
            from attachflow.lab.scenario_actions import LabActions
            yield LabActions(client, virt_type=virt_type)
        else:
            from attachflow.scenario.on_hosts import HostActions
            yield HostActions(client, virt_type=virt_type)


def _is_the_lab(hosts_file: Path) -> bool:
    from attachflow.lab.layout import hosts_file as lab_hosts_file
    try:
        return hosts_file.resolve() == lab_hosts_file().resolve()
    except OSError:
        return False


def _run_reporting(suites, actions, kernel_nodes, keep_going):
    """The run, with a progress line per step on stderr; SIGTERM is an interrupt."""
    from attachflow.scenario import engine, session

    def progress(name, step):
        click.echo(f"  {step.seconds:8.2f} s  {step.outcome:<7}  {step.label}", err=True)

    def starting(sc):
        click.echo(f"{sc.suite}: {sc.name} ({sc.where})", err=True)

    def finished(result):
        click.echo(f"  = {result.outcome} in {result.seconds:.1f} s", err=True)
        for line in result.left_behind:
            click.echo(f"  left behind: {line}", err=True)

    def terminated(_signum, _frame):
        raise KeyboardInterrupt

    runner = engine.Runner(actions, progress=progress)
    click.echo(f"run {runner.run_id}", err=True)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return session.run(suites, runner, kernel_nodes=kernel_nodes,
                           keep_going=keep_going, starting=starting, finished=finished)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show(report, fmt):
    if fmt == "json":
        output.emit([r.to_dict() for r in report.results], fmt)
        return
    rows = []
    for r in report.results:
        problem = r.first_problem
        rows.append({"suite": r.suite, "scenario": r.name, "result": r.outcome,
                     "seconds": round(r.seconds, 1),
                     "steps": f"{sum(s.outcome == 'passed' for s in r.steps)}/"
                              f"{len(r.steps)}",
                     "first problem": _cut(r.skipped or (
                         f"{problem.label} ({problem.where}): expected "
                         f"{problem.expected or '?'}, saw {problem.seen or '?'}"
                         if problem else "; ".join(r.left_behind)))})
    output.emit(rows, fmt)


def _cut(text: str, width: int = 100) -> str:
    """A table cell kept readable; -f json and the JUnit file have the whole text."""
    return text if len(text) <= width else text[:width - 3] + "..."
