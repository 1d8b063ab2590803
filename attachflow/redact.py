"""Secrets out of every log line: attachflow's and its dependencies'.

CHAP passwords travel in connection info (Cinder's answers, os-brick's arguments) and
tokens in HTTP headers; the HTTP client, os-brick and others log those at DEBUG. The
side effect owned here is the process's log record factory: ``install()`` wraps it so
that every record, from any logger, has its message rendered and its secrets masked
before any handler or filter of the application sees it. It is installed by
``attachflow.Client`` and by the command line, once per process.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from attachflow.model import MASK

# Key names whose values are secrets: CHAP and discovery CHAP passwords, Keystone
# passwords, tokens and application credential secrets, private keys.
_KEY = r"[\w-]*(?:password|passwd|secret|token|auth_key|private_key)[\w-]*"
_QUOTED = re.compile(rf"""(?P<key>["']?{_KEY}["']?\s*[:=]\s*)(?P<q>["'])(?P<value>.*?)(?<!\\)(?P=q)""",
                     re.IGNORECASE)
_BARE = re.compile(rf"""(?P<key>\b{_KEY}\s*[=:]\s*)(?P<value>[^\s"',;&}}\]]+)""", re.IGNORECASE)
_HEADER = re.compile(r"(?P<key>\b(?:X-Auth-Token|X-Service-Token|X-Subject-Token|"
                     r"Authorization)\s*:\s*)(?P<value>(?:Bearer |Basic )?[^\s\"',]+)",
                     re.IGNORECASE)


def mask_text(text: str) -> str:
    """``text`` with the value of every secret-named key and token header masked."""
    if not _might_hold_secret(text):
        return text
    text = _HEADER.sub(lambda m: m["key"] + MASK, text)
    text = _QUOTED.sub(lambda m: m["key"] + m["q"] + MASK + m["q"], text)
    return _BARE.sub(lambda m: m["key"] + (m["value"] if m["value"] == MASK else MASK), text)


def _might_hold_secret(text: str) -> bool:
    lower = text.lower()
    return any(word in lower for word in ("pass", "secret", "token", "auth", "key"))


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Mask secrets in every log record this process makes from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a malformed record is the logging module's to report
                return record
            masked = mask_text(message)
            if masked != message:
                record.msg, record.args = masked, ()
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
