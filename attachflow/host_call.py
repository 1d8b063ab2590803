"""``attachflow host-call``: the hidden command a compute host runs for ``BrickRemote``.

The caller (``attachflow.brick.BrickRemote``, over SSH) sends one JSON request on stdin,
never in argv, as it carries CHAP data; the answer of ``attachflow.brick.host_call``
goes back as JSON on stdout, and an error as one line on stderr with its exit code (the
shared ``boundary`` of ``attachflow.cli_common``). The side effect owned here is that
stdin/stdout exchange; os-brick runs in ``attachflow.brick``. The main command line
registers this command lazily and hides it from ``attachflow --help``.
"""

from __future__ import annotations

import json
import sys

import click

from attachflow import errors
from attachflow.cli_common import boundary


@click.command("host-call", hidden=True)
@boundary
def host_call(debug: bool = False):
    """Host end of remote os-brick calls: one JSON request on stdin, JSON answer out."""
    from attachflow.brick import host_call as run
    try:
        request = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        raise errors.InputError("host-call: stdin is not JSON") from exc
    click.echo(json.dumps(run(request)))
