"""attachflow's settings read from the environment: one place for how a variable is read
and checked (an empty value is no value; seconds are bounded numbers)."""

from __future__ import annotations

from typing import Mapping

from attachflow import errors


def env_value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value else None


# How long one storage request may take (ATTACHFLOW_STORAGE_TIMEOUT), and one call with
# its retries (ATTACHFLOW_STORAGE_DEADLINE): a storage API that accepts connections but
# never answers fails the command in about a minute. Cinder answers an attach in
# seconds; its own RPC timeout to the volume service is 60 s.
DEFAULT_TIMEOUT = 30.0
DEFAULT_DEADLINE = 60.0


def seconds_setting(env: Mapping[str, str], name: str, default: float,
                    kind: str = "timeout") -> float:
    value = env_value(env, name)
    if not value:
        return default
    from attachflow import validate
    try:
        return validate.check_number(name, float(value), kind)
    except (ValueError, errors.InputError) as exc:
        raise errors.InputError(f"{name} '{value}' is not a number of seconds from "
                                f"{validate.bounds_text(kind)}") from exc


def request_timeout(env: Mapping[str, str]) -> float:
    return seconds_setting(env, "ATTACHFLOW_STORAGE_TIMEOUT", DEFAULT_TIMEOUT)
