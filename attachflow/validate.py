"""The rules every value from a user must pass before anything is contacted.

Each ``check_*`` function returns the value in its canonical form or raises
``InputError`` with one line that names the value and the rule. The command line runs
them as its parameters are parsed; the library runs the same ones at its entry points,
so a bad value never reaches the storage API, libvirt or a host.
"""

from __future__ import annotations

import math
import re

from attachflow import errors

# Cinder's volume ids are UUIDs; it accepts them with or without dashes, in any case,
# and we send the canonical form (lower case, dashed), as Cinder stores it.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}$")
# libvirt refuses '/' in a domain name (it names files after it) and control characters
# make no sense in one; attachflow's own guests use a portable subset (NEW_DOMAIN).
_DOMAIN = re.compile(r"^[^/\x00-\x1f\x7f]{1,255}$")
_NEW_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# virtio disks as the guest kernel names them: vda..vdz, vdaa..vdzz
_DEVICE = re.compile(r"^vd[a-z]{1,2}$")

# Bounds of the numbers a user can give, with the reason for each.
BOUNDS = {
    # seconds: at least one poll; at most a day, beyond which a wait is a hang
    "timeout": (1.0, 86400.0),
    # seconds to wait for something else to finish first: none at all, up to a day
    "wait": (0.0, 86400.0),
    # MiB of guest memory: libvirt's floor for a bootable x86 guest; 1 TiB
    "memory": (16, 1 << 20),
    # vCPUs: QEMU's pc machine type stops at 255
    "vcpus": (1, 255),
    # milliseconds of pause at the switch-over: from 1 ms to 10 minutes
    "max_downtime": (1, 600_000),
    # MiB/s of migration bandwidth: up to 1 TiB/s
    "bandwidth": (1, 1 << 20),
}


def check_volume_id(value: str) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise errors.InputError(f"volume id '{_shown(value)}' is not a UUID "
                                "(Cinder's volume ids look like "
                                "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10)")
    plain = value.replace("-", "").lower()
    return f"{plain[:8]}-{plain[8:12]}-{plain[12:16]}-{plain[16:20]}-{plain[20:]}"


def _checked(pattern: re.Pattern[str], value: str, problem: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise errors.InputError(problem.format(value=_shown(value)))
    return value


def check_domain(value: str) -> str:
    return _checked(_DOMAIN, value, "domain name '{value}' is not valid for libvirt "
                                    "(1-255 characters, no '/' or control characters)")


def check_new_domain(value: str) -> str:
    return _checked(_NEW_DOMAIN, value, "'{value}' is not a valid name for a new domain "
                                        "(letters, digits, '_', '.', '-'; at most 64; "
                                        "starting with a letter or digit)")


def check_device(value: str) -> str:
    return _checked(_DEVICE, value, "device '{value}' is not a virtio disk name "
                                    "(vdb, vdc, ..., vdzz)")


def bounds_text(kind: str) -> str:
    """``BOUNDS[kind]`` as a user reads it: "16 to 1048576"."""
    return " to ".join(str(int(b)) if float(b).is_integer() else f"{b:g}"
                       for b in BOUNDS[kind])


def check_number(what: str, value: float, kind: str) -> float:
    """``value`` finite and within ``BOUNDS[kind]``; ``what`` names it in the error."""
    low, high = BOUNDS[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise errors.InputError(f"{what} must be a number from {bounds_text(kind)}, "
                                f"not {_shown(value)}")
    return value


def _shown(value: object) -> str:
    """The value as it can be shown in one line: printable, and not too long."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 80 else text[:77] + "..."
