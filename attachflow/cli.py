"""The attachflow command line: the user's commands, a thin click layer over the public
API (``attachflow.Client``).

This module owns the root group (``cli``, the ``attachflow`` program) and each user's
command: which options it takes and which ``Client`` call it makes. What the commands
share at their edge (the error-to-exit-code boundary, logging, the checked parameter
types, the common options) is ``attachflow.cli_common``; how results are printed is
``attachflow.output``. Two groups of commands live elsewhere and are loaded only when
used: ``attachflow lab`` (``attachflow.lab.cli``) and the hidden ``attachflow host-call``
(``attachflow.host_call``).

Every value is checked as it is parsed (``validate``), before anything is contacted.
Exit codes: 0 success; 1 the operation failed (and what it had done was undone, or the
message says what could not be); 2 bad usage or bad input (nothing was changed). Every
error is one line on stderr. Heavy libraries (cinderclient, os-brick, libvirt, paramiko)
and the lab package are imported only by the commands that use them, so
``attachflow --help`` starts fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

import attachflow
from attachflow import errors, output  # the exception tree the API raises
from attachflow.cli_common import (DEVICE, DOMAIN, EXIT_FAILED, NEW_DOMAIN, VOLUME, Number,
                                   bounds, common)


def _client(transport: str | None = None, api: str | None = None,
            os_cloud: str | None = None, progress=None, os_service_cloud: str | None = None,
            state_dir: str | None = None, lock_wait: float | None = None):
    """The library's client, made from the command line's settings."""
    return attachflow.Client(cloud=os_cloud, service_cloud=os_service_cloud,
                             transport=transport, api=api, progress=progress,
                             state_dir=state_dir, lock_wait=lock_wait)


class _Cli(click.Group):
    """Usage errors, like every other error, are one line: what is wrong, and where help
    is. The commands defined in other modules are imported when they are run or asked
    for their help, not to list them in ``attachflow --help``."""

    # name: (module, attribute, hidden, the first paragraph of the command's help, which
    # `attachflow --help` lists; a unit test keeps the two the same)
    lazy = {
        "lab": ("attachflow.lab.cli", "lab", False,
                "The local two-host lab: real Keystone, Cinder, tgtd, libvirtd, sshd "
                "(needs root)."),
        "scenario": ("attachflow.scenario.cli", "scenario", False,
                     "Declared runs of attach, detach, migration and faults, for CI "
                     "(scenario files)."),
        "host-call": ("attachflow.host_call", "host_call", True, ""),
    }
    _listing = False

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, attribute, hidden, summary = self.lazy[cmd_name]
        if self._listing:  # a stand-in with what the list shows: no import
            return click.Command(cmd_name, help=summary, hidden=hidden)
        command = getattr(importlib.import_module(module), attribute)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx, formatter):
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

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
                                   (after the host's boot_* in the hosts file)
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
    output.emit(props.to_dict(), fmt, columns)


@cli.command()
@click.argument("volume", type=VOLUME)
@click.argument("domain", type=DOMAIN)
@click.option("--device", type=DEVICE, default=None, metavar="vdX",
              help="Target device name; default: the next free vdX in the domain.")
@click.option("--multipath", is_flag=True, help="kernel transport: connect with multipath.")
@click.option("--detach-timeout", type=Number("timeout"), default=60.0, show_default=True,
              metavar="SECONDS",
              help=f"Seconds to wait for the guest if undo must detach "
                   f"({bounds('timeout', 's')}).")
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
    output.emit(result.to_dict(), fmt, columns)


@cli.command()
@click.argument("volume", type=VOLUME)
@click.argument("domain", type=DOMAIN)
@click.option("--timeout", type=Number("timeout"), default=60.0, show_default=True,
              metavar="SECONDS",
              help=f"Seconds to wait for the guest to release the disk (detach is retried "
                   f"within this time; {bounds('timeout', 's')}).")
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
    output.emit(result.to_dict(), fmt, columns)


@cli.command()
@click.argument("name", type=NEW_DOMAIN)
@click.option("--volume", type=VOLUME, required=True,
              help="Cinder volume for the root disk (vda).")
@click.option("--memory", type=Number("memory", int), default=128, show_default=True,
              metavar="MiB", help=f"Memory ({bounds('memory', 'MiB')}).")
@click.option("--vcpus", type=Number("vcpus", int), default=1, show_default=True,
              help=f"Virtual CPUs ({bounds('vcpus', '')}).")
@click.option("--virt-type", type=click.Choice(["kvm", "qemu"]),
              default=lambda: os.environ.get("ATTACHFLOW_VIRT_TYPE", "kvm"),
              show_default="kvm, or $ATTACHFLOW_VIRT_TYPE",
              help="kvm (hardware) or qemu (software emulation, TCG).")
@click.option("--kernel", metavar="PATH",
              help="Boot this kernel (a path on the compute host) instead of the volume's "
                   "boot loader [default: boot_kernel of the host's entry in the hosts "
                   "file, else $ATTACHFLOW_BOOT_KERNEL].")
@click.option("--initrd", metavar="PATH",
              help="Initrd for --kernel [default: boot_initrd of the host's entry, else "
                   "$ATTACHFLOW_BOOT_INITRD].")
@click.option("--cmdline",
              help="Kernel command line for --kernel [default: boot_cmdline of the host's "
                   "entry, else $ATTACHFLOW_BOOT_CMDLINE].")
@click.option("--no-kernel", is_flag=True,
              help="Boot the volume's own boot loader even when the host's entry or the "
                   "environment names a kernel.")
@common(journal=True)
def boot(name, volume, memory, vcpus, virt_type, kernel, initrd, cmdline, no_kernel, host,
         fmt, columns, debug, transport, api, os_cloud, os_service_cloud, state_dir,
         lock_wait):
    """Define and start domain NAME whose root disk (vda) is Cinder VOLUME.

    The guest boots from the volume, or from --kernel/--initrd with the volume as vda;
    those files must be on the host (checked before anything changes).
    Its serial console is logged to /var/log/libvirt/qemu/NAME-console.log on the host.
    A guest NAME already running from VOLUME is reported with already=true.
    """
    if (initrd or cmdline) and not kernel:
        raise click.UsageError("--initrd and --cmdline need --kernel")
    if no_kernel and kernel:
        raise click.UsageError("--no-kernel and --kernel contradict each other")
    with _client(transport, api, os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        from attachflow import bootfiles
        direct = None if no_kernel else bootfiles.direct_boot_for(
            client.host(host).cfg, kernel, initrd, cmdline)
        result = client.boot(name, volume, host=host, memory_mib=memory, vcpus=vcpus,
                             virt_type=virt_type, direct_boot=direct)
    output.emit(result.to_dict(), fmt, columns)


@cli.command()
@click.argument("domain", type=DOMAIN)
@click.option("--to", "destination", required=True, metavar="HOST",
              help="Destination compute host (a name from the hosts file or USER@ADDRESS).")
@click.option("--auto-converge", is_flag=True, help="Throttle the guest's vCPUs if memory "
                                                    "is dirtied faster than it is copied.")
@click.option("--postcopy", is_flag=True, help="Allow switching to post-copy.")
@click.option("--max-downtime", type=Number("max_downtime", int), default=None,
              metavar="MS", help=f"Largest pause of the guest allowed at the switch-over "
                                 f"({bounds('max_downtime', 'ms')}).")
@click.option("--bandwidth", type=Number("bandwidth", int), default=None, metavar="MiB/s",
              help=f"Cap the migration's bandwidth ({bounds('bandwidth', 'MiB/s')}).")
@click.option("--timeout", "completion_timeout", type=Number("timeout"), default=None,
              metavar="SECONDS", help=f"Completion timeout ({bounds('timeout', 's')}) "
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
    printer = output.progress_printer(progress)
    with _client(api=api, os_cloud=os_cloud, progress=printer,
                 os_service_cloud=os_service_cloud, state_dir=state_dir,
                 lock_wait=lock_wait) as client:
        if dry_run:
            output.migration_preview(attachflow.migration_preview(client.plan_migration(
                domain, source=host, destination=destination, options=options)), fmt, columns)
            return
        result = client.migrate(domain, source=host, destination=destination,
                                options=options)
        output.end_progress(progress, printer)
    output.emit(result.to_dict(), fmt, columns)
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
    output.volumes([e.to_dict() for e in entries], fmt, columns)
    if any(e.problem != "ok" for e in entries):
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("domain", type=DOMAIN)
@click.option("--force", is_flag=True,
              help="Delete a guest attachflow did not boot too (its recorded volumes are "
                   "still detached first).")
@click.option("--shutdown-timeout", type=Number("timeout"), default=60.0,
              show_default=True, metavar="SECONDS",
              help=f"Seconds to let the guest OS power off before it is forced off "
                   f"({bounds('timeout', 's')}).")
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
    output.emit(result.to_dict(), fmt, columns)


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
    output.operations(rows, fmt, columns)
    if any(row["state"] not in ("running", "done", "failed", "recovered") for row in rows):
        sys.exit(errors.RecoveryNeeded.exit_code)


@cli.command("recover")
@click.argument("op_id", required=False, metavar="[OP_ID]")
@click.option("--all", "recover_all", is_flag=True,
              help="Every interrupted or incomplete operation.")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option("--job-wait", type=Number("timeout"), default=600.0, show_default=True,
              metavar="SECONDS",
              help="How long to let a live migration job that is still running finish "
                   "before aborting it.")
@click.option("--unplug-wait", type=Number("timeout"), default=60.0, show_default=True,
              metavar="SECONDS",
              help="How long to wait for a guest that was asked to release a disk to "
                   "finish doing so; a guest that still holds it then needs a human "
                   "(stop the guest, then recover again).")
@common(transport=False, journal=True, host=False)
def recover_command(op_id, recover_all, dry_run, job_wait, unplug_wait, fmt, columns,
                    debug, api,
                    os_cloud, os_service_cloud, state_dir, lock_wait):
    """Finish or undo operations that were interrupted (OP_ID, or --all).

    For each, recover reads the real state -- the volume and its attachments in Cinder,
    the domain's XML on each host involved and where the guest runs, the host's
    connection, a migration job still running -- and rolls the operation forward when
    it had passed its point of no return (the guest has the disk, was asked to let it
    go, runs, or runs on the destination), back otherwise. Safe to run twice, or at once with
    another recover. Exits 0 when everything is settled, 5 when something needs a human
    (named on stderr), 4 when an operation is still running.
    """
    if bool(op_id) == bool(recover_all):
        raise click.UsageError("give one operation id, or --all")
    echo = (lambda line: click.echo(line, err=True)) if not dry_run else None
    with _client(api=api, os_cloud=os_cloud, os_service_cloud=os_service_cloud,
                 state_dir=state_dir, lock_wait=lock_wait) as client:
        results = client.recover(op_id, dry_run=dry_run, job_wait=job_wait,
                                 unplug_wait=unplug_wait, echo=echo)
    output.recover_results(results, fmt, columns, dry_run)
    human = [r for r in results if r.needs_human]
    for res in human:
        click.echo(f"attachflow: error: {res.describe()}", err=True)
    if human:
        sys.exit(errors.RecoveryNeeded.exit_code)
    if any(r.decision == "skipped" and "running" in r.reason for r in results):
        sys.exit(errors.Busy.exit_code)


def main() -> None:
    """The program: run the command, then end the process at once. A command's output,
    journal and locks are settled by the time it returns; what is left is the
    interpreter's tidying of a thousand imported modules, about 0.15 s of every command
    (paid by hooks once per volume), which nothing needs."""
    from attachflow import identity
    identity.read_clouds_yaml_without_the_sdk()  # this process runs attachflow alone
    try:
        cli.main(prog_name="attachflow")
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            code = code or 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
