import pytest

from attachflow.testing import FakeCinder, fake_host


@pytest.fixture
def cinder():
    return FakeCinder()


@pytest.fixture
def host(cinder):
    return fake_host("hosta", target=cinder)
