import logging

import pytest

from attachflow.testing import FakeCinder, fake_host


@pytest.fixture(autouse=True)
def _attachflow_logger_restored():
    """The CLI points the "attachflow" logger at stderr and stops it propagating;
    put it back so that log-capturing tests see the same logger whatever ran first."""
    log = logging.getLogger("attachflow")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


@pytest.fixture
def cinder():
    return FakeCinder()


@pytest.fixture
def host(cinder):
    return fake_host("hosta", target=cinder)
