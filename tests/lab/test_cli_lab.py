"""The command line and the library on real parts: no secret in any log (a library caller
logging everything at DEBUG, and `--debug`), while the trace shows the whole path; `list`
finds a disagreement made behind attachflow's back; `delete` removes a guest and releases
its volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from test_e2e import assert_detached, boot, name


def chap_passwords(lab) -> set[str]:
    """The CHAP passwords of every volume exported right now, from Cinder's target files."""
    found = set()
    for conf in (lab.state / "cinder" / "volumes").glob("*"):
        for line in conf.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["incominguser"] and len(parts) >= 3:
                found.add(parts[2])
    return found


LIBRARY_CALLER = textwrap.dedent("""
    import logging, sys
    import attachflow
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    vm, data = sys.argv[1], sys.argv[2]
    with attachflow.Client(transport="native") as af:
        af.attach(data, vm, host="hosta")
        print("attached", flush=True)
        sys.stdin.readline()          # the test reads the passwords meanwhile
        af.migrate(vm, source="hosta", destination="hostb")
        af.detach(data, vm, host="hostb")
    print("done")
""")


def test_no_secret_in_a_debug_library_caller_or_the_cli_debug_trace(lab, cleanup):
    vm, root = boot(lab, cleanup, "hosta", "attachments")
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    # Without the token cache each process logs in, so the logins are in the traces.
    no_token_cache = {**os.environ, "ATTACHFLOW_TOKEN_CACHE": "off"}
    caller = subprocess.Popen([sys.executable, "-c", LIBRARY_CALLER, vm, data],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=no_token_cache)
    assert caller.stdout.readline().strip() == "attached"
    secrets = chap_passwords(lab)
    out, err = caller.communicate("go\n", timeout=600)
    assert caller.returncode == 0, err[-3000:]
    assert len(secrets) >= 2 and all(len(s) >= 8 for s in secrets)
    library_log = out + err
    # the whole path is in the log: storage requests and answers, libvirt, steps
    for words in ("REQ: curl", "RESP BODY", "auth_password", "libvirt attach disk",
                  "storage connect (attachments)", "live migration"):
        assert words in library_log, words

    cleanup["domains"].append(("hostb", vm))
    traces = []
    for args in (["attach", data, vm, "--host", "hostb"],
                 ["migrate", vm, "--host", "hostb", "--to", "hosta"]):
        traces.append(lab.af(*args, "--debug", env=no_token_cache))
        secrets |= chap_passwords(lab)
    # and with it, a token read back from the cache is not printed either
    traces.append(lab.af("detach", data, vm, "--host", "hosta", "--debug"))
    cli_log = "".join(p.stdout + p.stderr for p in traces)
    for words in ("REQ: curl", "RESP:", "libvirt ", "ssh root@"):
        assert words in cli_log, words
    # Keystone's logins are in both traces, and neither the passwords nor the tokens
    from attachflow.lab import keystone
    for log in (library_log, cli_log):
        assert "authentication request to http://127.0.0.1:5000/v3/auth/tokens" in log
        assert "X-Service-Token" in log
        assert "gAAAAA" not in log  # how every Fernet token begins
    secrets |= set(keystone.passwords().values())
    for secret in secrets:
        assert secret not in library_log and secret not in cli_log
    assert_detached(lab, data, "hosta", vm)


def test_list_reports_a_disagreement_and_delete_removes_the_guest(lab, cleanup):
    vm, root = boot(lab, cleanup, "hosta", "attachments")
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    att = lab.af_json("attach", data, vm, "--host", "hosta")["attachment_id"]
    rows = json.loads(lab.af("list", vm, "--host", "hosta", "-f", "json").stdout)
    assert sorted((r["volume_id"], r["device"], r["problem"]) for r in rows) == sorted(
        [(root, "vda", "ok"), (data, "vdb", "ok")])

    lab.cinder.attachments.delete(att)           # released behind attachflow's back
    proc = lab.af("list", "--host", "hosta", "-f", "value", "-c", "volume_id", "-c",
                  "problem", expect=1)
    assert f"{data} disk in the guest, but the storage API lists no attachment to it" \
        in proc.stdout.splitlines()

    other = name("notours")
    cleanup["domains"].append(("hosta", other))
    refused = lab.af("delete", other, "--host", "hosta", "--strict", expect=2)
    assert "not found" in refused.stderr

    result = lab.af_json("delete", vm, "--host", "hosta", "--shutdown-timeout", "2")
    assert result["detached"] == [data, root]
    assert vm not in lab.domains("hosta")
    for vol in (root, data):
        assert lab.volume(vol).status == "available" and not lab.attachments(vol)
        assert lab.initiators_of(vol) == []
        assert not any(vol in usage for usage in lab.secrets("hosta"))
