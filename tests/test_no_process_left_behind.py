"""tests/conftest.py's guard: a test that leaves a child process running gets an error naming
the process, and the process is killed; a test that stops what it started passes."""

from __future__ import annotations

import subprocess
import sys
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


def test_a_child_left_running_is_an_error_of_its_test_and_is_killed(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"),
            *("--rootdir", str(tmp_path), "-o", "addopts=", "-q", str(tmp_path / "test_leaky.py")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The leaky test itself passed; its teardown is the error.
    assert "2 passed, 1 error" in done.stdout, done.stdout + done.stderr
    assert "test_leaves_one_running left processes running" in done.stdout
    assert "left-behind-marker" in done.stdout
    pid = int((tmp_path / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
