"""CI fails when a required suite skips (tests/skipguard.py); allowed skips (no CUDA, root) pass."""

import os
from pathlib import Path

import pytest

from tests.skipguard import strict_skips_enabled

PLUGIN = "tests.skipguard"
ROOT = Path(__file__).resolve().parents[2]


def _run(pytester: pytest.Pytester, monkeypatch, body: str, **env: str):
    for k in ("CI", "CURATION_STRICT_SKIPS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pytester.makepyfile(test_suite=body)
    return pytester.runpytest_subprocess("-p", PLUGIN, "-q")


def test_a_required_suite_that_skips_fails_ci(pytester, monkeypatch):
    body = "import pytest\ndef test_pg():\n    pytest.skip('no PostgreSQL at host=127.0.0.1')\n"
    res = _run(pytester, monkeypatch, body, CI="true")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["*required suites were skipped*", "*test_pg: *no PostgreSQL*"])


def test_the_same_skip_passes_outside_ci(pytester, monkeypatch):
    body = "import pytest\ndef test_pg():\n    pytest.skip('no PostgreSQL at host=127.0.0.1')\n"
    assert _run(pytester, monkeypatch, body).ret == pytest.ExitCode.OK


def test_allowed_skips_pass_in_ci(pytester, monkeypatch):
    body = ("import pytest\n@pytest.mark.skipif(True, reason='needs CUDA')\ndef test_gpu():\n    pass\n"
            "def test_ok():\n    assert True\n")
    assert _run(pytester, monkeypatch, body, CI="true").ret == pytest.ExitCode.OK


def test_a_failing_run_keeps_its_own_status(pytester, monkeypatch):
    body = "def test_bad():\n    assert False\n"
    assert _run(pytester, monkeypatch, body, CI="true").ret == pytest.ExitCode.TESTS_FAILED


def test_switch():
    assert strict_skips_enabled({"CI": "true"})
    assert not strict_skips_enabled({"CI": "true", "CURATION_STRICT_SKIPS": "0"})
    assert strict_skips_enabled({"CURATION_STRICT_SKIPS": "1"})
    assert not strict_skips_enabled({})
