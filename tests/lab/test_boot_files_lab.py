"""What guests boot on each lab host, after nothing but `eval "$(attachflow lab env)"`: the
hosts file names the guest OS for hosta and hostb, nothing for the nodes; a kernel a host
does not have is refused before the volume is connected, in one line, exit 2."""

from __future__ import annotations

import os

import pytest

from labenv import evaluated

pytestmark = pytest.mark.lab

MISSING = "/var/lib/attachflow-lab/no-such-guest/vmlinuz"


def user_env(lab, **extra: str) -> dict[str, str]:
    """A shell that ran `lab env`, and perhaps exported more (an older `lab env`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ATTACHFLOW_BOOT_")}
    return {**evaluated(lab.manager.env_lines(), base=base), **extra}


def assert_untouched(lab, host: str, volume: str, domain: str) -> None:
    assert lab.volume(volume).status == "available" and lab.attachments(volume) == []
    assert domain not in lab.domains(host)
    assert lab.initiators_of(volume) == []


def test_a_guest_on_hosta_boots_the_guest_os_its_entry_names(lab, cleanup):
    root = lab.create_volume(name="bootfiles")
    cleanup["volumes"].append(root)
    cleanup["domains"].append(("hosta", "bootfiles-os"))
    lab.af("boot", "bootfiles-os", "--volume", root, "--host", "hosta",
           env=user_env(lab))
    xml = lab.domain_xml("hosta", "bootfiles-os")
    assert "<kernel>" + str(lab.state / "guest" / "vmlinuz") + "</kernel>" in xml


def test_a_kernel_hosta_does_not_have_is_refused_before_anything_changes(lab, cleanup):
    root = lab.create_volume(name="bootfiles")
    cleanup["volumes"].append(root)
    cleanup["domains"].append(("hosta", "bootfiles-no"))
    cp = lab.af("boot", "bootfiles-no", "--volume", root, "--host", "hosta", "--kernel",
                MISSING, expect=2, env=user_env(lab))
    assert cp.stderr.splitlines() == [
        f"attachflow: error: the kernel '{MISSING}' is not a readable file on hosta: boot "
        "a kernel that is there (--kernel, or boot_kernel in hosta's entry of the hosts "
        "file) or copy it there; nothing was changed"]
    assert_untouched(lab, "hosta", root, "bootfiles-no")


@pytest.mark.kernel
def test_the_old_lab_env_kernel_is_refused_on_a_node_before_it_connects(lab, cleanup):
    lab.manager.up(echo=lambda line: print(line, flush=True), kernel_nodes=True)
    root = lab.create_volume(name="bootfiles")
    cleanup["volumes"].append(root)
    cleanup["domains"].append(("nodea", "bootfiles-node"))
    kernel = str(lab.state / "guest" / "vmlinuz")  # on this machine, not on the node
    env = user_env(lab, ATTACHFLOW_BOOT_KERNEL=kernel, ATTACHFLOW_TRANSPORT="kernel")
    cp = lab.af("boot", "bootfiles-node", "--volume", root, "--host", "nodea", expect=2,
                env=env)
    assert cp.stderr.splitlines()[-1].startswith(
        f"attachflow: error: the kernel '{kernel}' is not a readable file on nodea: ")
    assert_untouched(lab, "nodea", root, "bootfiles-node")
    # with nothing but `lab env`, a guest on the node boots from its volume
    env = user_env(lab, ATTACHFLOW_TRANSPORT="kernel")
    lab.af("boot", "bootfiles-node", "--volume", root, "--host", "nodea", "--memory", "64",
           env=env)
    assert "<kernel>" not in lab.domain_xml("nodea", "bootfiles-node")
    lab.af("delete", "bootfiles-node", "--host", "nodea", env=env)
