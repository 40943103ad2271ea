"""tests/conftest.py's guard: a test that leaves a child process running gets an error naming
the process, and the process is killed; a test that stops what it started passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

LEAKY = """
import pathlib, subprocess, sys

def test_leaves_one_running() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "left-behind-marker"])
    pathlib.Path(__file__).with_name("pid").write_text(str(proc.pid))

def test_stops_what_it_started() -> None:
    subprocess.Popen([sys.executable, "-c", "pass"]).wait()
"""

WIDER = """
import subprocess, sys

import pytest


@pytest.fixture(scope="session")
def shared_server():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "shared-marker"])
    yield proc
    proc.kill()
    proc.wait()


def test_asks_for_it_mid_test(request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("shared_server")


def test_still_has_it(shared_server: subprocess.Popen[bytes]) -> None:
    assert shared_server.poll() is None
"""


def _inner_pytest(tmp_path: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    """``text`` as a test file run by a pytest of its own, with this suite's conftest (its guard)."""
    (tmp_path / name).write_text(text)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"),
            *("--rootdir", str(tmp_path), "-o", "addopts=", "-q", str(tmp_path / name)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_session_fixture_first_asked_for_mid_test_is_not_a_leak(tmp_path: Path) -> None:
    """Its process belongs to the session: the test that first asked for it did not leave it
    behind, and it is not killed under the tests that share it."""
    done = _inner_pytest(tmp_path, "test_wider.py", WIDER)
    assert "2 passed" in done.stdout, done.stdout + done.stderr
    assert "error" not in done.stdout.splitlines()[-1], done.stdout


def test_a_child_left_running_is_an_error_of_its_test_and_is_killed(tmp_path: Path) -> None:
    done = _inner_pytest(tmp_path, "test_leaky.py", LEAKY)
    # The leaky test itself passed; its teardown is the error.
    assert "2 passed, 1 error" in done.stdout, done.stdout + done.stderr
    assert "test_leaves_one_running left processes running" in done.stdout
    assert "left-behind-marker" in done.stdout
    pid = int((tmp_path / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


KILLED = """
import json, pathlib, subprocess, sys, time

import psutil

from tests.processes import tied


def test_killed_mid_way(nats_url: str) -> None:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], **tied())
    pids = [p.pid for p in psutil.Process().children()]
    # Written whole, then renamed: the outer test reads it as soon as the name exists.
    half = pathlib.Path(__file__).with_name("pids.part")
    half.write_text(json.dumps(pids))
    half.rename(half.with_name("pids"))
    time.sleep(300)
"""


def test_a_pytest_killed_mid_test_leaves_no_server_or_child_behind(tmp_path: Path) -> None:
    """The conftest's nats-server (a session of its own) and a child started with ``tied()``
    end with a pytest that is SIGKILLed (no teardown runs): nothing is orphaned."""
    (tmp_path / "test_killed.py").write_text(KILLED)
    pids_file = tmp_path / "pids"
    inner = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"),
            *("--rootdir", str(tmp_path), "-o", "addopts=", "-q", str(tmp_path / "test_killed.py")),
        ],
        cwd=ROOT,
        # The conftest's own nats-server, the one under test: with NATS_URL set (a CI job's
        # shared server) the fixture would start none and there would be nothing to orphan.
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not pids_file.exists():
            assert inner.poll() is None, "the inner pytest ended before its test ran"
            assert time.monotonic() < deadline, "the inner test never started"
            time.sleep(0.1)
        children = [psutil.Process(pid) for pid in json.loads(pids_file.read_text())]
        names = sorted(p.name() for p in children)
        assert len(children) == 2, names
        assert "nats-server" in names
    finally:
        inner.kill()
        inner.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    left = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.kill()
    assert not left, [p.cmdline() for p in left]
