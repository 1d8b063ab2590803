"""The attachflow command line: a thin click layer over the public API (``attachflow.Client``).

Every value is checked as it is parsed (``validate``), before anything is contacted.
Exit codes: 0 success; 1 the operation failed (and what it had done was undone, or the
message says what could not be); 2 bad usage or bad input (nothing was changed). Every
error is one line on stderr. Heavy libraries (cinderclient, os-brick, libvirt, paramiko)
are imported only by the commands that use them, so ``attachflow --help`` starts fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable

import click

import attachflow
from attachflow import errors, output, validate  # the exception tree the API raises

EXIT_FAILED = 1  # an unexpected error; AttachflowError carries its own exit code

HOST_HELP = ("Compute host: 'local' (this machine, qemu:///system), a name from the hosts "
             "file ($ATTACHFLOW_HOSTS, default ~/.config/attachflow/hosts.toml), or an "
             "explicit USER@ADDRESS [$ATTACHFLOW_HOST].")


# What --debug traces besides attachflow's own lines (storage requests, libvirt calls, SSH
# commands, os-brick calls): the HTTP client's request and response lines, Cinder's
# client, and os-brick's own steps. Secrets are masked in all of them (``redact``).
_DEBUG_LOGGERS = ("attachflow", "keystoneauth", "cinderclient", "os_brick")


def _setup_logging(debug: bool) -> None:
    from attachflow import redact
    redact.install()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    for name in _DEBUG_LOGGERS:
        log = logging.getLogger(name)
        # A logger with no handler falls back to Python's last-resort one on stderr: the
        # others get a NullHandler so their warnings (keystoneauth's discovery notes)
        # stay out of the one-line error unless --debug asks for them.
        log.handlers[:] = ([handler] if debug or name == "attachflow"
                           else [logging.NullHandler()])
        log.setLevel(logging.DEBUG if debug else logging.WARNING)
        log.propagate = False


def _emit(data: dict[str, Any] | list, fmt: str, columns: tuple[str, ...] = ()) -> None:
    output.emit(data, fmt, columns)


def _print_trace() -> None:
    """The exception being handled and its causes, with secret-named values masked: a
    cause may be a dependency's exception that quotes a request or a configuration."""
    from attachflow import redact
    click.echo(redact.mask_text(traceback.format_exc()).rstrip("\n"), err=True)


def _boundary(fn: Callable) -> Callable:
    """Map the library's errors to one clear line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        _setup_logging(debug)
        try:
            return fn(*args, **kwargs)
        except errors.AttachflowError as exc:
            if debug:
                _print_trace()
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
            click.echo(f"attachflow: internal error: {type(exc).__name__}: {exc} "
                       "(run with --debug for the trace)", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


# -- parameter types: each runs a validator, so a bad value stops at parsing ---------------
class _Checked(click.ParamType):
    def __init__(self, name: str, check: Callable[[str], str]):
        self.name = name
        self._check = check

    def convert(self, value, param, ctx):
        try:
            return self._check(value)
        except errors.InputError as exc:
            raise click.UsageError(str(exc), ctx) from exc


class _Number(click.ParamType):
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


def _bounds(kind: str, unit: str) -> str:
    return f"{validate.bounds_text(kind)} {unit}".rstrip()


VOLUME = _Checked("volume", validate.check_volume_id)
DOMAIN = _Checked("domain", validate.check_domain)
NEW_DOMAIN = _Checked("name", validate.check_new_domain)
DEVICE = _Checked("device", validate.check_device)


STATE_DIR_OPTION = click.option(
    "--state-dir", default=None, metavar="DIR",
    help="Where the operations journal and the locks live [$ATTACHFLOW_STATE_DIR, "
         "default /var/lib/attachflow]. Every command that changes something records each "
         "step there first, so that 'attachflow recover' can finish or undo it after an "
         "interruption.")


def common(storage: bool = True, transport: bool = True, result: bool = True,
           journal: bool = False, host: bool = True) -> Callable:
    def decorate(fn):
        opts = [
            click.option("--debug", is_flag=True,
                         help="Trace every storage request, libvirt call, SSH command and "
                              "os-brick call on stderr (secrets masked)."),
        ]
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
                click.option("--lock-wait", type=_Number("wait"), default=None,
                             metavar="SECONDS",
                             help="How long to wait for another operation on the same "
                                  "volume or domain before giving up with exit 4 "
                                  f"({_bounds('wait', 's')}) [$ATTACHFLOW_LOCK_WAIT, "
                                  "default 60].")]
        for opt in reversed(opts):
            fn = opt(fn)
        return _boundary(fn)
    return decorate


def _client(transport: str | None = None, api: str | None = None,
            os_cloud: str | None = None, progress=None, os_service_cloud: str | None = None,
            state_dir: str | None = None, lock_wait: float | None = None):
    """The library's client, made from the command line's settings."""
    return attachflow.Client(cloud=os_cloud, service_cloud=os_service_cloud,
                             transport=transport, api=api, progress=progress,
                             state_dir=state_dir, lock_wait=lock_wait)


class _Cli(click.Group):
    """Usage errors, like every other error, are one line: what is wrong, and where help
    is."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            click.echo("attachflow: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "attachflow"
            click.echo(f"attachflow: error: {exc.format_message()} (see '{where} --help')",
                       err=True)
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            # the reader went away (`attachflow ... | head`): nothing more to say
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attachflow")
def cli():
    """Attach Cinder volumes to libvirt guests, detach them, boot volume-backed guests.

    \b
    Typical use on a compute host:
      attachflow connector                      what this host tells Cinder
      attachflow boot vm1 --volume VOL1         guest whose root disk (vda) is VOL1
      attachflow attach VOL2 vm1                VOL2 appears in vm1 as the next vdX
      attachflow detach VOL2 vm1                and goes away, leaving nothing behind
      attachflow migrate vm1 --to compute7      live migration, volumes reconnected

    Storage credentials come from --os-cloud / OS_CLOUD (clouds.yaml), the usual OS_*
    variables, or noauth for labs (OS_AUTH_TYPE=noauth, OS_ENDPOINT, OS_USER_ID,
    OS_PROJECT_ID). Behind Keystone, detach and migration need a service user too
    (--os-service-cloud): Cinder releases a guest's attachment only for a service.
    Every command undoes its own steps when one fails, and is safe to run again; each
    step is journaled first, so an interrupted command (killed, its machine rebooted)
    is finished or undone by 'attachflow recover --all'. Exit status is 0 on success,
    1 when the operation failed, 2 on bad usage or input, 3 when Keystone refused the
    login or Cinder refused the user the call (nothing changed), 4 when another
    operation holds the volume or domain, 5 when an interrupted operation must be
    recovered first (or recover needs a human).

    \b
    Environment:
      ATTACHFLOW_HOSTS             hosts file (~/.config/attachflow/hosts.toml)
      ATTACHFLOW_HOST              --host (local)
      ATTACHFLOW_TRANSPORT         --transport (kernel)
      ATTACHFLOW_VIRT_TYPE         boot --virt-type (kvm)
      ATTACHFLOW_BOOT_KERNEL, _INITRD, _CMDLINE   boot --kernel, --initrd, --cmdline
      ATTACHFLOW_STORAGE_TIMEOUT   seconds per storage API request (30; 1 to 86400)
      ATTACHFLOW_STORAGE_DEADLINE  seconds per storage call, retries included (60)
      ATTACHFLOW_SERVICE_CLOUD     --os-service-cloud (or OS_SERVICE_USERNAME, ...)
      ATTACHFLOW_STATE_DIR         --state-dir (/var/lib/attachflow): journal, locks
      ATTACHFLOW_LOCK_WAIT         --lock-wait (60 s)
    """


@cli.command()
@click.option("--multipath", is_flag=True, help="Ask os-brick for multipath properties.")
@common(storage=False)
def connector(host, fmt, columns, debug, transport, multipath):
    """Show the connector properties HOST sends to Cinder (initiator, ip, host, ...)."""
    with _client(transport) as client:
        props = client.connector(host, multipath=multipath)
    _emit(props.to_dict(), fmt, columns)


@cli.command()
@click.argument("volume", type=VOLUME)
@click.argument("domain", type=DOMAIN)
@click.option("--device", type=DEVICE, default=None, metavar="vdX",
              help="Target device name; default: the next free vdX in the domain.")
@click.option("--multipath", is_flag=True, help="kernel transport: connect with multipath.")
@click.option("--detach-timeout", type=_Number("timeout"), default=60.0, show_default=True,
              metavar="SECONDS",
              help=f"Seconds to wait for the guest if undo must detach "
                   f"({_bounds('timeout', 's')}).")
@common(journal=True)
def attach(volume, domain, device, multipath, detach_timeout, host, fmt, columns, debug,
           transport, api, os_cloud, os_service_cloud, state_dir, lock_wait):
    """Attach Cinder VOLUME (its id) to libvirt DOMAIN as /dev/vdX.

    Asks Cinder for the connection (attachment with this host's connector, or the
    legacy reserve + initialize_connection), connects the host (os-brick, or a libvirt
    secret for QEMU's initiator), hot-plugs the disk with the volume id as its serial
    (live and persistent; persistent only when the domain is shut off), and completes
    the attachment in Cinder. The device reported is the one found by serial in the
    domain's XML. A volume attached to DOMAIN already, as asked, is reported with
    already=true and nothing changes.
    """
    with _client(transport, api, os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        result = client.attach(volume, domain, host=host, device=device,
                               multipath=multipath, detach_timeout=detach_timeout)
    _emit(result.to_dict(), fmt, columns)


@cli.command()
@click.argument("volume", type=VOLUME)
@click.argument("domain", type=DOMAIN)
@click.option("--timeout", type=_Number("timeout"), default=60.0, show_default=True,
              metavar="SECONDS",
              help=f"Seconds to wait for the guest to release the disk (detach is retried "
                   f"within this time; {_bounds('timeout', 's')}).")
@click.option("--strict", is_flag=True,
              help="Fail (exit 2) when the volume is not attached to DOMAIN, instead of "
                   "reporting that there was nothing to do.")
@common(journal=True)
def detach(volume, domain, timeout, strict, host, fmt, columns, debug, transport, api,
           os_cloud, os_service_cloud, state_dir, lock_wait):
    """Detach Cinder VOLUME from libvirt DOMAIN and clean up host and storage.

    Removes the disk from the persistent and the live definition and waits for the
    guest to release it, disconnects the host (os-brick, or removes the libvirt secret),
    then deletes the attachment in Cinder (legacy: terminate_connection + detach). The
    API and transport the volume was attached with are remembered in the domain's
    metadata and used again. Running it again after a partial failure finishes the job;
    a volume that is not attached is reported with already=true (see --strict).
    """
    explicit = click.get_current_context().get_parameter_source("transport")
    chosen = transport if explicit == click.core.ParameterSource.COMMANDLINE else None
    with _client(transport, api, os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        result = client.detach(volume, domain, host=host, transport=chosen, timeout=timeout,
                               strict=strict)
    _emit(result.to_dict(), fmt, columns)


@cli.command()
@click.argument("name", type=NEW_DOMAIN)
@click.option("--volume", type=VOLUME, required=True,
              help="Cinder volume for the root disk (vda).")
@click.option("--memory", type=_Number("memory", int), default=128, show_default=True,
              metavar="MiB", help=f"Memory ({_bounds('memory', 'MiB')}).")
@click.option("--vcpus", type=_Number("vcpus", int), default=1, show_default=True,
              help=f"Virtual CPUs ({_bounds('vcpus', '')}).")
@click.option("--virt-type", type=click.Choice(["kvm", "qemu"]),
              default=lambda: os.environ.get("ATTACHFLOW_VIRT_TYPE", "kvm"),
              show_default="kvm, or $ATTACHFLOW_VIRT_TYPE",
              help="kvm (hardware) or qemu (software emulation, TCG).")
@click.option("--kernel", default=lambda: os.environ.get("ATTACHFLOW_BOOT_KERNEL"),
              metavar="PATH", help="Boot this kernel (a path on the compute host) instead "
                                   "of the volume's boot loader [$ATTACHFLOW_BOOT_KERNEL].")
@click.option("--initrd", default=lambda: os.environ.get("ATTACHFLOW_BOOT_INITRD"),
              metavar="PATH", help="Initrd for --kernel [$ATTACHFLOW_BOOT_INITRD].")
@click.option("--cmdline", default=lambda: os.environ.get("ATTACHFLOW_BOOT_CMDLINE"),
              help="Kernel command line for --kernel [$ATTACHFLOW_BOOT_CMDLINE].")
@common(journal=True)
def boot(name, volume, memory, vcpus, virt_type, kernel, initrd, cmdline, host, fmt, columns,
         debug, transport, api, os_cloud, os_service_cloud, state_dir, lock_wait):
    """Define and start domain NAME whose root disk (vda) is Cinder VOLUME.

    The guest boots from the volume, or from --kernel/--initrd with the volume as vda.
    Its serial console is logged to /var/log/libvirt/qemu/NAME-console.log on the host.
    A guest NAME already running from VOLUME is reported with already=true.
    """
    if (initrd or cmdline) and not kernel:
        raise click.UsageError("--initrd and --cmdline need --kernel")
    direct = attachflow.DirectBoot(kernel, initrd, cmdline) if kernel else None
    with _client(transport, api, os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        result = client.boot(name, volume, host=host, memory_mib=memory, vcpus=vcpus,
                             virt_type=virt_type, direct_boot=direct)
    _emit(result.to_dict(), fmt, columns)


def _progress_printer(kind: str):
    """Migration progress on stderr: a bar, JSON lines, or nothing."""
    MigrationProgress = attachflow.MigrationProgress
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


@cli.command()
@click.argument("domain", type=DOMAIN)
@click.option("--to", "destination", required=True, metavar="HOST",
              help="Destination compute host (a name from the hosts file or USER@ADDRESS).")
@click.option("--auto-converge", is_flag=True, help="Throttle the guest's vCPUs if memory "
                                                    "is dirtied faster than it is copied.")
@click.option("--postcopy", is_flag=True, help="Allow switching to post-copy.")
@click.option("--max-downtime", type=_Number("max_downtime", int), default=None,
              metavar="MS", help=f"Largest pause of the guest allowed at the switch-over "
                                 f"({_bounds('max_downtime', 'ms')}).")
@click.option("--bandwidth", type=_Number("bandwidth", int), default=None, metavar="MiB/s",
              help=f"Cap the migration's bandwidth ({_bounds('bandwidth', 'MiB/s')}).")
@click.option("--timeout", "completion_timeout", type=_Number("timeout"), default=None,
              metavar="SECONDS", help=f"Completion timeout ({_bounds('timeout', 's')}) "
                                      "[default: 800 s per GiB of guest memory, at least "
                                      "60 s].")
@click.option("--on-timeout", type=click.Choice(["abort", "postcopy"]), default="abort",
              show_default=True, help="What to do when the timeout passes.")
@click.option("--copy-local-disks", is_flag=True,
              help="Copy disks that are not Cinder volumes (block migration).")
@click.option("--progress", type=click.Choice(["auto", "bar", "json", "none"]),
              default="auto", show_default=True,
              help="Progress on stderr: a bar (auto: on a terminal), JSON lines, or none.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan and the domain XML change; touch nothing.")
@common(transport=False, journal=True)
def migrate(domain, destination, auto_converge, postcopy, max_downtime, bandwidth,
            completion_timeout, on_timeout, copy_local_disks, progress, dry_run, host, fmt,
            columns, debug, api, os_cloud, os_service_cloud, state_dir, lock_wait):
    """Live-migrate running DOMAIN from --host to --to over qemu+ssh.

    Every volume gets a connection for the destination first (attachments API: a new
    attachment with the destination's connector; legacy: initialize_connection), is
    connected there, and the domain XML is rewritten by serial; then libvirt migrates
    the guest (live, peer-to-peer, persistent on the destination, undefined on the
    source, no disk copy for volumes). Afterwards the destination attachments are
    completed, the source disconnected and its attachments deleted. Any failure before
    the guest runs on the destination rolls everything back; the guest keeps running on
    the source with exactly one attachment per volume.
    """
    options = attachflow.MigrationOptions(
        auto_converge=auto_converge, postcopy=postcopy, max_downtime_ms=max_downtime,
        bandwidth_mib=bandwidth, completion_timeout=completion_timeout,
        on_timeout=on_timeout, copy_local_disks=copy_local_disks)
    printer = _progress_printer(progress)
    with _client(api=api, os_cloud=os_cloud, progress=printer,
                 os_service_cloud=os_service_cloud, state_dir=state_dir,
                 lock_wait=lock_wait) as client:
        if dry_run:
            out = attachflow.migration_preview(client.plan_migration(
                domain, source=host, destination=destination, options=options))
            if fmt == "table":
                for step in out["steps"]:
                    click.echo(f"- {step}")
                click.echo(out["xml_diff"], nl=False)
            else:
                _emit(out, fmt, columns)
            return
        result = client.migrate(domain, source=host, destination=destination,
                                options=options)
        if printer is not None and progress != "json":
            click.echo("", err=True)
    _emit(result.to_dict(), fmt, columns)
    if result.left_behind:
        for line in result.left_behind:
            click.echo(f"attachflow: warning: {line}", err=True)
        sys.exit(EXIT_FAILED)


@cli.command("list")
@click.argument("domain", type=DOMAIN, required=False)
@common(transport=False)
def list_volumes(domain, host, fmt, columns, debug, api, os_cloud, os_service_cloud):
    """List the volumes attachflow attached on HOST (or to DOMAIN), per guest.

    For each: the guest and its state, the volume, its device, transport, API and
    attachment as recorded in the domain, the volume's status and the attachment the
    storage API lists for the guest, and under 'problem' any disagreement between the
    two sides (a disk with no attachment, an attachment with no disk, another
    attachment than the recorded one, a volume that no longer exists). Exits 1 when
    there is a disagreement.
    """
    with _client(api=api, os_cloud=os_cloud, os_service_cloud=os_service_cloud) as client:
        entries = client.list_volumes(host=host, domain=domain)
    wide = fmt in ("json", "yaml")  # documents carry every field; tables the main ones
    _emit([e.to_dict() for e in entries], fmt, columns or (() if wide else _LIST_COLUMNS))
    if any(e.problem != "ok" for e in entries):
        sys.exit(EXIT_FAILED)


_LIST_COLUMNS = ("domain", "volume_id", "device", "transport", "attachment_id",
                 "volume_status", "problem")


@cli.command()
@click.argument("domain", type=DOMAIN)
@click.option("--force", is_flag=True,
              help="Delete a guest attachflow did not boot too (its recorded volumes are "
                   "still detached first).")
@click.option("--shutdown-timeout", type=_Number("timeout"), default=60.0,
              show_default=True, metavar="SECONDS",
              help=f"Seconds to let the guest OS power off before it is forced off "
                   f"({_bounds('timeout', 's')}).")
@click.option("--strict", is_flag=True,
              help="Fail (exit 2) when DOMAIN does not exist, instead of reporting that "
                   "there was nothing to do.")
@common(transport=False, journal=True)
def delete(domain, force, shutdown_timeout, strict, host, fmt, columns, debug, api,
           os_cloud, os_service_cloud, state_dir, lock_wait):
    """Stop and undefine DOMAIN, a guest attachflow booted, detaching its volumes first.

    The guest is asked to power off (ACPI) and forced off after --shutdown-timeout; then
    every volume attachflow attached is detached and released in the storage API (the
    volumes themselves are kept), and the domain is undefined. A volume that cannot be
    detached stops the delete before the domain is undefined: run it again to finish.
    """
    with _client(api=api, os_cloud=os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        result = client.delete_guest(domain, host=host, force=force,
                                     shutdown_timeout=shutdown_timeout, strict=strict)
    _emit(result.to_dict(), fmt, columns)


_OPERATION_COLUMNS = ("id", "kind", "state", "host", "destination", "domain", "volumes",
                      "started", "step")


@cli.command("operations")
@click.option("--all", "show_all", is_flag=True,
              help="Also the finished operations the journal keeps (30 days).")
@common(storage=False, transport=False, journal=True, host=False)
def operations_command(show_all, fmt, columns, debug, state_dir, lock_wait):
    """List the operations in the journal: by default those not finished.

    \b
    state: running       a live attachflow process runs it now
           interrupted   its process died mid-way: run 'attachflow recover ID'
           incomplete    it ended with something left to do or undo: recover
           needs-human   recover found something it must not decide (see outcome)
           done, failed, recovered   finished (--all)
    step is the last step it recorded. Exits 5 when an operation needs recover.
    """
    with _client(state_dir=state_dir, lock_wait=lock_wait) as client:
        ops = client.operations(include_finished=show_all)
        rows = [op.to_dict(client.shown_state(op)) for op in ops]
    wide = fmt in ("json", "yaml")
    if not wide:
        for row in rows:
            row["id"], row["volumes"] = row["id"][:8], " ".join(row["volumes"])
            row["destination"] = row["destination"] or ""
    _emit(rows, fmt, columns or (() if wide else _OPERATION_COLUMNS))
    if any(row["state"] not in ("running", "done", "failed", "recovered") for row in rows):
        sys.exit(errors.RecoveryNeeded.exit_code)


@cli.command("recover")
@click.argument("op_id", required=False, metavar="[OP_ID]")
@click.option("--all", "recover_all", is_flag=True,
              help="Every interrupted or incomplete operation.")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option("--job-wait", type=_Number("timeout"), default=600.0, show_default=True,
              metavar="SECONDS",
              help="How long to let a live migration job that is still running finish "
                   "before aborting it.")
@common(transport=False, journal=True, host=False)
def recover_command(op_id, recover_all, dry_run, job_wait, fmt, columns, debug, api,
                    os_cloud, os_service_cloud, state_dir, lock_wait):
    """Finish or undo operations that were interrupted (OP_ID, or --all).

    For each, recover reads the real state -- the volume and its attachments in Cinder,
    the domain's XML on each host involved and where the guest runs, the host's
    connection, a migration job still running -- and rolls the operation forward when
    it had passed its point of no return (the guest has the disk, has let it go, runs,
    or runs on the destination), back otherwise. Safe to run twice, or at once with
    another recover. Exits 0 when everything is settled, 5 when something needs a human
    (named on stderr), 4 when an operation is still running.
    """
    if bool(op_id) == bool(recover_all):
        raise click.UsageError("give one operation id, or --all")
    echo = (lambda line: click.echo(line, err=True)) if not dry_run else None
    with _client(api=api, os_cloud=os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        results = client.recover(op_id, dry_run=dry_run, job_wait=job_wait, echo=echo)
    if fmt == "table":
        if not results:
            click.echo("nothing to recover")
        for res in results:
            click.echo(("would: " if dry_run and not res.needs_human else "")
                       + res.describe())
    else:
        _emit([r.to_dict() for r in results], fmt, columns)
    human = [r for r in results if r.needs_human]
    for res in human:
        click.echo(f"attachflow: error: {res.describe()}", err=True)
    if human:
        sys.exit(errors.RecoveryNeeded.exit_code)
    if any(r.decision == "skipped" and "running" in r.reason for r in results):
        sys.exit(errors.Busy.exit_code)


@cli.command("host-call", hidden=True)
@_boundary
def host_call(debug: bool = False):
    """Host end of remote os-brick calls: one JSON request on stdin, JSON answer out."""
    from attachflow.brick import host_call as run
    try:
        request = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        raise errors.InputError("host-call: stdin is not JSON") from exc
    click.echo(json.dumps(run(request)))


@cli.group()
def lab():
    """The local two-host lab: real Keystone, Cinder, tgtd, libvirtd, sshd (needs root).

    \b
      attachflow lab up          install what is missing, start everything, wait
      eval "$(attachflow lab env)"
      openstack volume create --size 1 v1
      attachflow boot vm --volume V --host hosta
      attachflow lab down        remove every process, namespace and file of the lab
    """


def _lab_module():
    if os.geteuid() != 0:
        raise errors.InputError("the lab needs root")
    import attachflow.lab
    return attachflow.lab


def _lab_call(fn):
    """Lab errors are operation failures with a one-line message."""
    from attachflow.lab import LabError
    try:
        return fn()
    except LabError as exc:
        raise errors.AttachflowError(f"lab: {exc}") from exc


@lab.command("up")
@click.option("--auth", type=click.Choice(["keystone", "noauth"]), default=None,
              help="How Cinder checks its callers: keystone (default; tokens, a service "
                   "user, clouds.yaml) or noauth (no Keystone; Cinder trusts the request). "
                   "A running lab keeps what it was brought up with.")
@click.option("--kernel-nodes", is_flag=True,
              help="Also boot two compute-node VMs, nodea and nodeb (Debian 12 under "
                   "QEMU TCG, with the kernel iSCSI initiator, multipath, libvirt and "
                   "attachflow), for --transport kernel. The first time builds their "
                   "image (about 4 minutes, then cached); booting takes a few minutes. "
                   "Added to a running lab that lacks them; kept until `lab down`.")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--debug", is_flag=True)
@_boundary
def lab_up(auth, kernel_nodes, fmt, debug):
    """Bring the lab up (idempotent); waits until every service is usable."""
    lab_api = _lab_module()
    status = _lab_call(lambda: lab_api.up(echo=lambda m: click.echo(m, err=True),
                                          auth=auth, kernel_nodes=kernel_nodes))
    _emit_lab_status(status, fmt)


@lab.command("down")
@click.option("--debug", is_flag=True)
@_boundary
def lab_down(debug):
    """Stop the lab and remove everything it created."""
    lab_api = _lab_module()
    _lab_call(lambda: lab_api.down(echo=lambda m: click.echo(m, err=True)))


@lab.command("status")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--debug", is_flag=True)
@_boundary
def lab_status(fmt, debug):
    """Each component's state, endpoints and hosts."""
    lab_api = _lab_module()
    _emit_lab_status(_lab_call(lab_api.status), fmt)


def _emit_lab_status(status: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        _emit(status, "json")
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


@lab.command("env")
@click.option("--debug", is_flag=True)
@_boundary
def lab_env(debug):
    """Print export lines: eval "$(attachflow lab env)"."""
    lab_api = _lab_module()
    for line in _lab_call(lab_api.env_lines):
        click.echo(line)


def main() -> None:
    cli.main(prog_name="attachflow")


if __name__ == "__main__":
    main()
