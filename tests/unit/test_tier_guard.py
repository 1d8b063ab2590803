"""The guard that fails a CI run when a tier it must run did not run in full."""

from pathlib import Path

import pytest

GUARD = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()

SUITE = '''
import pytest

def test_unit():
    pass

@pytest.mark.lab
def test_lab():
    pass

@pytest.mark.lab
@pytest.mark.kernel
def test_kernel():
    pass
'''


@pytest.fixture
def suite(pytester, monkeypatch):
    pytester.makeconftest(GUARD.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makeini("[pytest]\nmarkers =\n    lab\n    kernel\n    kernel_long\n"
                     "    crash_long\nci_tiers =\n    unit\n    lab\n    kernel\n")
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("CI", "true")
    return pytester


def test_a_ci_run_of_every_tier_passes_and_says_what_ran(suite):
    result = suite.runpytest()
    assert result.ret == 0
    result.stdout.fnmatch_lines(["tiers CI must run, tests run: unit 1, lab 1, kernel 1"])


def test_a_deselected_tier_fails_the_run_naming_it(suite):
    result = suite.runpytest("-m", "not kernel")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["tier kernel: 1 deselected: test_suite.py::test_kernel"])


def test_a_skipped_test_fails_the_run(suite):
    suite.makepyfile(test_more='''
import pytest

@pytest.mark.lab
def test_skips():
    pytest.skip("no lab here")
''')
    result = suite.runpytest()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["tier lab: 1 skipped: test_more.py::test_skips"])


def test_a_tier_that_collected_nothing_fails_the_run(suite):
    suite.makepyfile(test_suite="def test_unit():\n    pass\n")
    result = suite.runpytest()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["tier lab: no test collected",
                                 "tier kernel: no test collected"])


def test_outside_ci_the_guard_is_not_there(suite, monkeypatch):
    monkeypatch.delenv("CI")
    result = suite.runpytest("-m", "not kernel")
    assert result.ret == 0
    assert "tiers CI must run" not in result.stdout.str()


def test_a_listing_is_not_held_to_the_tiers(suite):
    result = suite.runpytest("--collect-only", "-q", "-m", "not kernel")
    assert result.ret == 0
    assert "tiers CI must run" not in result.stdout.str()


def test_outside_ci_a_partial_run_is_fine(suite, monkeypatch):
    monkeypatch.delenv("CI")
    assert suite.runpytest("-m", "not kernel").ret == 0
