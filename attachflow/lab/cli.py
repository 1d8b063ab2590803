"""``attachflow lab``: the command group that brings the local two-host lab up and down.

The side effects are the lab's own (``attachflow.lab``: processes, namespaces, files);
this module only maps its commands onto them, through the shared ``boundary``
(``attachflow.cli_common``), and renders through ``attachflow.output``. The main
command line registers the group lazily, so that ``attachflow --help`` and the user's
commands never import the lab package.
"""

from __future__ import annotations

import os

import click

from attachflow import errors, output
from attachflow.cli_common import boundary


@click.group()
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
@boundary
def lab_up(auth, kernel_nodes, fmt, debug):
    """Bring the lab up (idempotent); waits until every service is usable."""
    lab_api = _lab_module()
    status = _lab_call(lambda: lab_api.up(echo=lambda m: click.echo(m, err=True),
                                          auth=auth, kernel_nodes=kernel_nodes))
    output.lab_status(status, fmt)


@lab.command("down")
@click.option("--debug", is_flag=True)
@boundary
def lab_down(debug):
    """Stop the lab and remove everything it created."""
    lab_api = _lab_module()
    _lab_call(lambda: lab_api.down(echo=lambda m: click.echo(m, err=True)))


@lab.command("status")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--debug", is_flag=True)
@boundary
def lab_status(fmt, debug):
    """Each component's state, endpoints and hosts."""
    lab_api = _lab_module()
    output.lab_status(_lab_call(lab_api.status), fmt)


@lab.command("env")
@click.option("--debug", is_flag=True)
@boundary
def lab_env(debug):
    """Print export lines: eval "$(attachflow lab env)"."""
    lab_api = _lab_module()
    for line in _lab_call(lab_api.env_lines):
        click.echo(line)
