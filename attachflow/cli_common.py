"""What every attachflow command shares at its edge, whichever module defines it.

The side effects owned here are the process's logging set-up (``--debug``) and turning
the library's errors into one line on stderr and an exit code (``boundary``): 0 success;
1 the operation failed; 2 bad usage or bad input; an ``AttachflowError`` carries its own
code. Also here: the parameter types that check each value as it is parsed
(``validate``), and ``common``, the options the user's commands share. The user's
commands (``cli``), the lab's (``attachflow.lab.cli``) and the host end of remote
os-brick calls (``host_call``) all import this module, never one another, so that
``python3 -m attachflow.cli`` does not load the command line twice. Only click and
attachflow's light modules are imported, to keep ``attachflow --help`` fast.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from typing import Callable

import click

from attachflow import errors, output, timings, validate

EXIT_FAILED = 1  # an unexpected error; AttachflowError carries its own exit code

HOST_HELP = ("Compute host: 'local' (this machine, qemu:///system), a name from the hosts "
             "file ($ATTACHFLOW_HOSTS, default ~/.config/attachflow/hosts.toml), or an "
             "explicit USER@ADDRESS [$ATTACHFLOW_HOST].")


# What --debug traces besides attachflow's own lines (storage requests, libvirt calls, SSH
# commands, os-brick calls): the HTTP client's request and response lines, Cinder's
# client, and os-brick's own steps. Secrets are masked in all of them (``redact``).
DEBUG_LOGGERS = ("attachflow", "keystoneauth", "cinderclient", "os_brick")


def setup_logging(debug: bool) -> None:
    from attachflow import redact
    redact.install()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    for name in DEBUG_LOGGERS:
        log = logging.getLogger(name)
        # A logger with no handler falls back to Python's last-resort one on stderr: the
        # others get a NullHandler so their warnings (keystoneauth's discovery notes)
        # stay out of the one-line error unless --debug asks for them.
        log.handlers[:] = ([handler] if debug or name == "attachflow"
                           else [logging.NullHandler()])
        log.setLevel(logging.DEBUG if debug else logging.WARNING)
        log.propagate = False


def _print_trace() -> None:
    """The exception being handled and its causes, with secret-named values masked: a
    cause may be a dependency's exception that quotes a request or a configuration."""
    from attachflow import redact
    click.echo(redact.mask_text(traceback.format_exc()).rstrip("\n"), err=True)


def boundary(fn: Callable) -> Callable:
    """Map the library's errors to one clear line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        # --timings is the boundary's own option: the command never sees it
        show_timings = kwargs.pop("timings", False) or debug
        setup_logging(debug)
        timings.reset()
        started = timings.since_process_start()
        if started is not None:
            timings.record("start-up", "interpreter, imports, option parsing", started)

        def show() -> None:  # before the error line, which stays the last one
            if show_timings:
                total = timings.since_process_start()
                for line in timings.report(total if total is not None else 0.0):
                    click.echo(line, err=True)

        result = _run_reported(fn, args, kwargs, debug, show)
        show()
        return result

    return wrapper


def _run_reported(fn: Callable, args, kwargs, debug: bool, before_error: Callable):
    """``fn``, with the library's errors as one line and an exit code."""
    try:
        return fn(*args, **kwargs)
    except errors.AttachflowError as exc:
        if debug:
            _print_trace()
        before_error()
        click.echo(f"attachflow: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("attachflow: interrupted", err=True)
        sys.exit(130)
    except (click.ClickException, BrokenPipeError):
        raise
    except Exception as exc:
        if debug:
            _print_trace()
        before_error()
        click.echo(f"attachflow: internal error: {type(exc).__name__}: {exc} "
                   "(run with --debug for the trace)", err=True)
        sys.exit(EXIT_FAILED)


# -- parameter types: each runs a validator, so a bad value stops at parsing ---------------
class Checked(click.ParamType):
    def __init__(self, name: str, check: Callable[[str], str]):
        self.name = name
        self._check = check

    def convert(self, value, param, ctx):
        try:
            return self._check(value)
        except errors.InputError as exc:
            raise click.UsageError(str(exc), ctx) from exc


class Number(click.ParamType):
    """A finite number within ``validate.BOUNDS[kind]``; ints stay ints."""

    def __init__(self, kind: str, cast: type = float):
        self.kind, self.cast = kind, cast
        self.name = "integer" if cast is int else "number"

    def convert(self, value, param, ctx):
        what = f"{param.opts[-1] if param else 'value'}"
        try:
            number = self.cast(value)
        except (TypeError, ValueError) as exc:
            raise click.UsageError(f"{what} must be "
                                   f"{'a whole number' if self.cast is int else 'a number'}"
                                   f", not '{value}'", ctx) from exc
        try:
            return validate.check_number(what, number, self.kind)
        except errors.InputError as exc:
            raise click.UsageError(str(exc), ctx) from exc


def bounds(kind: str, unit: str) -> str:
    return f"{validate.bounds_text(kind)} {unit}".rstrip()


VOLUME = Checked("volume", validate.check_volume_id)
DOMAIN = Checked("domain", validate.check_domain)
NEW_DOMAIN = Checked("name", validate.check_new_domain)
DEVICE = Checked("device", validate.check_device)


STATE_DIR_OPTION = click.option(
    "--state-dir", default=None, metavar="DIR",
    help="Where the operations journal and the locks live [$ATTACHFLOW_STATE_DIR, "
         "default /var/lib/attachflow]. Every command that changes something records each "
         "step there first, so that 'attachflow recover' can finish or undo it after an "
         "interruption.")


DEBUG_OPTION = click.option(
    "--debug", is_flag=True,
    help="Trace every storage request, libvirt call, SSH command and os-brick call on "
         "stderr (secrets masked); the timings too.")
TIMINGS_OPTION = click.option(
    "--timings", is_flag=True,
    help="At the end, on stderr: where the time went, per phase (interpreter and "
         "imports, configuration, each Keystone login, negotiation, each host "
         "connection, storage call, libvirt call and host-call).")


def common(storage: bool = True, transport: bool = True, result: bool = True,
           journal: bool = False, host: bool = True) -> Callable:
    """The options a user's command shares with the others, and its ``boundary``."""
    def decorate(fn):
        opts = [DEBUG_OPTION, TIMINGS_OPTION]
        if host:
            opts.insert(0, click.option(
                "--host", default=lambda: os.environ.get("ATTACHFLOW_HOST", "local"),
                show_default="local", help=HOST_HELP))
        if result:
            opts += [
                click.option("-f", "--format", "fmt", type=click.Choice(output.FORMATS),
                             default="table", show_default=True, help="Output format."),
                click.option("-c", "--column", "columns", multiple=True, metavar="COLUMN",
                             help="Show only this column (repeatable; in this order)."),
            ]
        if transport:
            opts.append(click.option(
                "--transport", type=click.Choice(["native", "kernel"]),
                default=lambda: os.environ.get("ATTACHFLOW_TRANSPORT", "kernel"),
                show_default="kernel, or $ATTACHFLOW_TRANSPORT",
                help="kernel: the host's iSCSI initiator through os-brick (block device); "
                     "native: QEMU's own initiator (network disk, CHAP in a libvirt "
                     "secret, no host session)."))
        if storage:
            opts += [
                click.option("--api", type=click.Choice(["auto", "attachments", "legacy"]),
                             default="auto", show_default=True,
                             help="Cinder attach API: attachments (3.44+), legacy "
                                  "(reserve/initialize_connection/attach), or auto: "
                                  "attachments when the server speaks 3.44."),
                click.option("--os-cloud", default=None,
                             help="Cloud from clouds.yaml (default $OS_CLOUD); otherwise "
                                  "the OS_* variables, or OS_AUTH_TYPE=noauth with "
                                  "OS_ENDPOINT, OS_USER_ID, OS_PROJECT_ID."),
                click.option("--os-service-cloud", default=None,
                             help="Cloud of a user with the 'service' role, whose token "
                                  "goes with every request (Cinder releases a guest's "
                                  "attachment only for a service) [$ATTACHFLOW_SERVICE_"
                                  "CLOUD; or OS_SERVICE_USERNAME, OS_SERVICE_PASSWORD, "
                                  "OS_SERVICE_PROJECT_NAME]."),
            ]
        if journal:
            opts += [
                STATE_DIR_OPTION,
                click.option("--lock-wait", type=Number("wait"), default=None,
                             metavar="SECONDS",
                             help="How long to wait for another operation on the same "
                                  "volume or domain before giving up with exit 4 "
                                  f"({bounds('wait', 's')}) [$ATTACHFLOW_LOCK_WAIT, "
                                  "default 60].")]
        for opt in reversed(opts):
            fn = opt(fn)
        return boundary(fn)
    return decorate
