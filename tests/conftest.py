"""The test tiers, and a run that fails when CI did not run one it must.

Every test belongs to one tier, its most specific marker: ``kernel_long``, ``crash_long``,
``kernel``, ``lab``, or ``unit`` (no lab marker). ``ci_tiers`` in pyproject.toml names the
tiers a CI run (``CI=true``, as CI systems set it) must execute. In such a run, a tier
that collected nothing, had a test deselected, or had a test skipped fails the run at
its end, naming the tier and the tests: a tier cannot quietly not run.
"""

from __future__ import annotations

import os

import pytest

# pytester: the guard's own tests run pytest on small suites of their own.
pytest_plugins = ["pytester"]

TIERS = ("kernel_long", "crash_long", "kernel", "lab")  # most specific first
UNIT = "unit"


def tier_of(item: pytest.Item) -> str:
    return next((t for t in TIERS if item.get_closest_marker(t)), UNIT)


def pytest_addoption(parser):
    parser.addini("ci_tiers", type="linelist",
                  help="tiers a CI run (CI=true) must run in full: "
                       f"{', '.join((UNIT, *TIERS))}")


class TierGuard:
    def __init__(self, required: list[str]):
        unknown = set(required) - {UNIT, *TIERS}
        if unknown:
            raise pytest.UsageError(f"ci_tiers: unknown tier {', '.join(sorted(unknown))}")
        self.required = required
        self.collected: dict[str, int] = dict.fromkeys(required, 0)
        self.deselected: dict[str, list[str]] = {t: [] for t in required}
        self.skipped: dict[str, list[str]] = {t: [] for t in required}
        self.ran: dict[str, int] = dict.fromkeys(required, 0)
        self._tier: dict[str, str] = {}
        self._deselected_items: list[pytest.Item] = []

    def pytest_deselected(self, items):
        self._deselected_items.extend(items)

    def pytest_collection_finish(self, session):
        # Tiers are read once collection is over: conftests add markers as it runs.
        for item in session.items:
            self._tier[item.nodeid] = tier = tier_of(item)
            if tier in self.collected:
                self.collected[tier] += 1
        for item in self._deselected_items:
            tier = tier_of(item)
            if tier in self.collected:
                self.collected[tier] += 1
                self.deselected[tier].append(item.nodeid)

    def pytest_runtest_logreport(self, report):
        tier = self._tier.get(report.nodeid)
        if tier not in self.ran:
            return
        if report.skipped:
            self.skipped[tier].append(report.nodeid)
        elif report.when == "call":
            self.ran[tier] += 1

    def problems(self) -> list[str]:
        out = []
        for tier in self.required:
            if not self.collected[tier]:
                out.append(f"tier {tier}: no test collected")
                continue
            for what, ids in (("deselected", self.deselected[tier]),
                              ("skipped", self.skipped[tier])):
                if ids:
                    shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
                    out.append(f"tier {tier}: {len(ids)} {what}: {shown}")
            if not self.ran[tier] and not self.skipped[tier]:
                out.append(f"tier {tier}: no test ran")
        return out

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        found = self.problems()
        if found:
            self.found = found
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        found = getattr(self, "found", [])
        ran = ", ".join(f"{t} {self.ran[t]}" for t in self.required)
        if found:
            terminalreporter.section("tiers CI must run", red=True)
            for line in found:
                terminalreporter.write_line(line, red=True)
        else:
            terminalreporter.write_line(f"tiers CI must run, tests run: {ran}")


def pytest_configure(config):
    # A listing (--collect-only) runs nothing, so it has no tier to hold to account.
    if os.environ.get("CI", "").lower() == "true" and not config.option.collectonly:
        config.pluginmanager.register(TierGuard(config.getini("ci_tiers")), "tier-guard")
