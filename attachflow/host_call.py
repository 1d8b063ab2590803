"""``attachflow host-call``: the hidden command a compute host runs for ``BrickRemote``.

The caller (``attachflow.brick.BrickRemote``, over SSH) sends one JSON request on stdin,
never in argv, as it carries CHAP data; the answer of ``attachflow.brick.host_call``
goes back as JSON on stdout, and an error as one line on stderr with its exit code (the
shared ``boundary`` of ``attachflow.cli_common``). With ``--serve`` it stays running for
the caller's whole command: one JSON request per line in, one JSON line out per request
(``{"answer": ...}`` or ``{"error": LINE, "exit_code": N}``, LINE as the one-shot call
would print it), so Python and os-brick start once per command instead of once per call. The side effect owned here is that
stdin/stdout exchange; os-brick runs in ``attachflow.brick``. The main command line
registers this command lazily and hides it from ``attachflow --help``.
"""

from __future__ import annotations

import json
import sys

import click

from attachflow import errors
from attachflow.cli_common import EXIT_FAILED, boundary


SERVING = {"serving": 1}  # the first line of --serve: the caller knows it is answered


@click.command("host-call", hidden=True)
@click.option("--serve", is_flag=True,
              help="Answer one JSON request per line until stdin ends.")
@boundary
def host_call(serve: bool = False, debug: bool = False):
    """Host end of remote os-brick calls: one JSON request on stdin, JSON answer out."""
    from attachflow.brick import host_call as run
    if serve:
        _serve(run)
        return
    try:
        request = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        raise errors.InputError("host-call: stdin is not JSON") from exc
    click.echo(json.dumps(run(request)))


def _serve(run) -> None:
    _reply(SERVING)
    for line in sys.stdin:
        if line.strip():
            _reply(_answer(run, line))


def _answer(run, line: str) -> dict:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError
    except ValueError:
        error: errors.AttachflowError = errors.InputError("host-call: a request is not "
                                                          "a JSON object")
        return {"error": f"attachflow: error: {error}", "exit_code": error.exit_code}
    try:
        return {"answer": run(request)}
    except errors.AttachflowError as exc:
        return {"error": f"attachflow: error: {exc}", "exit_code": exc.exit_code}
    except Exception as exc:  # as the one-shot call reports it, and serve on
        return {"error": f"attachflow: internal error: {type(exc).__name__}: {exc}",
                "exit_code": EXIT_FAILED}


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
