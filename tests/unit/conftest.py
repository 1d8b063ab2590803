import logging

import pytest

from twins import FakeCinder, fake_host


@pytest.fixture(autouse=True)
def _loggers_restored():
    """The CLI points its loggers at stderr and stops them propagating; put them back so
    that log-capturing tests see the same loggers whatever ran first."""
    from attachflow.cli_common import DEBUG_LOGGERS
    logs = [logging.getLogger(name) for name in DEBUG_LOGGERS]
    saved = [(log.handlers[:], log.level, log.propagate) for log in logs]
    yield
    for log, (handlers, level, propagate) in zip(logs, saved):
        log.handlers[:], log.level, log.propagate = handlers, level, propagate


@pytest.fixture
def cinder():
    return FakeCinder()


@pytest.fixture
def host(cinder):
    return fake_host("hosta", target=cinder)


@pytest.fixture
def world():
    """Cinder and two hosts of twins that can migrate to each other."""
    cinder, network = FakeCinder(), {}
    hosts = {name: fake_host(name, cinder, address, network)
             for name, address in (("hosta", "198.18.0.11"), ("hostb", "198.18.0.12"))}
    return cinder, hosts


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    """Each test's own journal and locks: a client or command made without a state
    directory uses ATTACHFLOW_STATE_DIR, as on a host."""
    monkeypatch.setenv("ATTACHFLOW_STATE_DIR", str(tmp_path / "state"))
