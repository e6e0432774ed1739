"""A pytest plugin: in CI, a skipped test fails the run unless its skip is one of the few that the
machine legitimately cannot run (a CUDA device, permissions that root ignores).

A required suite (PostgreSQL, Chromium, torch/open_clip, moto, helm) that skips because its service
or package is missing would otherwise let CI pass while testing less. Enabled when the environment
has CI=true (the CI runner sets it) or CURATION_STRICT_SKIPS=1; CURATION_STRICT_SKIPS=0 turns it off.
"""

from __future__ import annotations

import os
import re

import pytest

# Skips the CI machine is allowed to take: no GPU there, and it runs as root.
ALLOWED_SKIPS = (
    re.compile(r"needs CUDA"),
    re.compile(r"euid 0: permissions do not stop reads"),
)


def strict_skips_enabled(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    flag = env.get("CURATION_STRICT_SKIPS")
    if flag is not None:
        return flag.strip().lower() in {"1", "true", "yes"}
    return env.get("CI", "").strip().lower() in {"1", "true", "yes"}


def disallowed(reports: list[pytest.TestReport]) -> list[tuple[str, str]]:
    """(test id, skip reason) for every skip that is not on the allow-list."""
    out = []
    for rep in reports:
        reason = str(rep.longrepr[2]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if not any(p.search(reason) for p in ALLOWED_SKIPS):
            out.append((rep.nodeid, reason))
    return out


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not strict_skips_enabled():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    bad = disallowed(skipped)
    if bad:
        lines = [f"  {nodeid}: {reason}" for nodeid, reason in bad]
        msg = ("required suites were skipped (CI fails rather than passing with skips; install what "
               "they need, or set CURATION_STRICT_SKIPS=0 locally):\n" + "\n".join(lines))
        if reporter is not None:
            reporter.write_line(msg, red=True)
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
