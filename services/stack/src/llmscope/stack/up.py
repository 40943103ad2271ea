"""``llmscope up``: the whole stack on one machine, from one command.

Starts, in order: an embedded nats-server (unless ``NATS_URL``), an embedded PostgreSQL (unless
``DATABASE_URL``), the simulated LLM endpoint, the API (which persists and serves the dashboard),
the SPC engine, the alerter and one prober aimed at the simulator. Each service is a child
process in its own session, so Ctrl-C reaches only this supervisor, which then stops the children
in reverse order and the embedded servers last. A child that dies, embedded servers included, is
restarted with backoff, with one line saying so; children get a stop signal from the kernel when
this supervisor dies, however it dies (see ``lifetime``).

The embedded servers are closed: on first start ``up`` generates a NATS password per service (each
allowed only its own subjects, see ``llmscope.proto.permissions``) and a PostgreSQL
password, keeps them in the data directory (0700; files 0600, like everything ``up`` and its
children create: umask 077) and hands the children URLs that carry them. ``DATA_DIR/client.env``
holds the URLs and API key for commands run from another terminal.

| variable | default | meaning |
| --- | --- | --- |
| LLMSCOPE_DATA_DIR | ./.llmscope | embedded NATS and Postgres data, generated API key and passwords |
| LLMSCOPE_HOST | 127.0.0.1 | address the API and dashboard listen on |
| LLMSCOPE_PORT | 8000 | port of the API and dashboard |
| LLMSCOPE_API_KEY | generated once, kept in DATA_DIR/api_key | bearer token for the API |
| LLMSCOPE_NATS_PORT | 4222 | port of the embedded nats-server |
| LLMSCOPE_NATS_MAX_PROCS | 1 | cores the embedded nats-server uses (its GOMAXPROCS); 0: every core |
| LLMSCOPE_PG_PORT | 5432 | port of the embedded PostgreSQL |
| LLMSCOPE_SIM_PORT | 11500 | port of the simulated LLM endpoint |
| LLMSCOPE_SIMULATOR | true | start the simulator and point the default prober at it |
| LLMSCOPE_UP_SERVICES | sim,api,spc-engine,alerter,prober | which services `up` runs |
| LLMSCOPE_PROBER_HEALTH_PORT | PORT + 1 | prober's /metrics (and /healthz, /readyz); 0: none |
| LLMSCOPE_SPC_HEALTH_PORT | PORT + 2 | SPC engine's /metrics (and /healthz, /readyz); 0: none |
| LLMSCOPE_ALERTER_HEALTH_PORT | PORT + 3 | alerter's /metrics (and /healthz, /readyz); 0: none |
| NATS_URL / DATABASE_URL | unset | use these servers instead of embedded ones |
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmscope.config.env import ConfigError, Env, config_exit, redact_url
from llmscope.proto import permissions, subjects
from llmscope.stack.embedded import NATS_MAX_PROCS, EmbeddedNats, EmbeddedPostgres, write_private
from llmscope.stack.lifetime import die_with_parent
from llmscope.stack.ports import PortInUseError, port_in_use

ALL_SERVICES = ("sim", "api", "spc-engine", "alerter", "prober")

# Under `up` each service connects to the embedded NATS as its own user, allowed only the subjects
# it uses (llmscope.proto.permissions); commands run from another terminal (client.env) connect
# as the unrestricted operator. The prober's user cannot forge a violation or touch a stream: the
# prober is the service that runs on other hosts, and its password is the one copied there.
NATS_USER = permissions.OPERATOR

# Each service's /metrics port under `up`, next to the API's (8001-8003 by default, the ports of
# compose and Kubernetes): (service, variable, offset from LLMSCOPE_PORT).
METRICS_PORTS = (
    ("prober", "LLMSCOPE_PROBER_HEALTH_PORT", 1),
    ("spc-engine", "LLMSCOPE_SPC_HEALTH_PORT", 2),
    ("alerter", "LLMSCOPE_ALERTER_HEALTH_PORT", 3),
)

# With only the simulator to probe, a production baseline (1000 points per prompt chart at 2 s)
# would keep the demo "collecting" for hours. The demo runs the simulator four times faster, probes
# every 0.25 s and freezes limits after 200 points: charts arm within a few minutes. Not fewer:
# limits estimated from 50 points false-alarm 16-33 times per 100,000 probes (make bench's
# machinery, baseline_n=50), a critical every few demo minutes over the 12 paging charts; from
# 200 points 2-5, so a quiet demo stays quiet. Any of these set in the environment wins.
# Not faster still: at 0.1 a simple prompt takes ~30 ms, and a scheduling hiccup of the stack on
# one laptop (tens of ms) is a 5-sigma SPIKE there; at 0.25 a 7-minute demo run opened one critical
# episode without any injection, against six at 0.1.
DEMO_PROFILE = {
    "LLMSCOPE_SIM_TIME_SCALE": "0.25",
    "LLMSCOPE_PROBER_INTERVAL_S": "0.25",
    "LLMSCOPE_SPC_BASELINE_N": "200",
}
# Simulated application traffic traced to the API's OTLP receiver (an ingest key is generated
# for it), so the traffic charts fill too: 4 requests/s over 4 models and 2 services is ~30 a
# minute per subgroup (a point needs 10; the p90 chart, which needs 50, stays empty), and 15
# minutes arm the charts. Not more: the simulator serves the probes too, and at 8 requests/s its
# process spent ~9 % of a core on the traffic (7 % at 4), time its probes could wait behind. A
# production traffic chart keeps a one-day baseline.
DEMO_TRAFFIC = {
    "LLMSCOPE_SIM_TRAFFIC_RPS": "4",
    "LLMSCOPE_SPC_TRAFFIC_BASELINE_MINUTES": "15",
}


@dataclass(frozen=True)
class UpSettings:
    data_dir: Path
    host: str
    port: int
    api_key: str | None
    nats_url: str | None
    database_url: str | None
    nats_port: int
    pg_port: int
    sim_port: int
    simulator: bool
    services: tuple[str, ...]
    metrics_ports: dict[str, int]
    """/metrics port of each service that runs and has one of its own (the API serves its own)."""
    charts_bucket: str = subjects.SPC_CHARTS_BUCKET
    """The SPC engine's chart bucket (LLMSCOPE_SPC_CHARTS_BUCKET): its NATS user may write it."""
    state_bucket: str = subjects.SPC_STATE_BUCKET
    """The SPC engine's state bucket (LLMSCOPE_SPC_STATE_BUCKET): its NATS user alone may write it."""
    nats_max_procs: int = NATS_MAX_PROCS
    """The embedded nats-server's GOMAXPROCS (LLMSCOPE_NATS_MAX_PROCS); 0: Go's own choice."""

    @classmethod
    def from_env(cls, env: Env) -> UpSettings:
        services = env.items("LLMSCOPE_UP_SERVICES", ALL_SERVICES)
        unknown = [s for s in services if s not in ALL_SERVICES]
        if unknown:
            raise ConfigError(f"LLMSCOPE_UP_SERVICES: unknown service(s) {', '.join(unknown)}")
        simulator = env.flag("LLMSCOPE_SIMULATOR", True)
        if not simulator:
            services = tuple(s for s in services if s != "sim")
        port = env.integer("LLMSCOPE_PORT", 8000, min=1, max=65535)
        metrics_ports = {
            service: env.integer(variable, min(port + offset, 65535), min=0, max=65535)
            for service, variable, offset in METRICS_PORTS
            if service in services
        }
        return cls(
            data_dir=Path(env.text("LLMSCOPE_DATA_DIR", ".llmscope")).expanduser().resolve(),
            host=env.text("LLMSCOPE_HOST", "127.0.0.1"),
            port=port,
            api_key=env.optional_text("LLMSCOPE_API_KEY"),
            nats_url=env.url("NATS_URL", None, schemes=("nats", "tls", "ws", "wss")),
            database_url=env.url("DATABASE_URL", None, schemes=("postgres", "postgresql")),
            nats_port=env.integer("LLMSCOPE_NATS_PORT", 4222, min=1, max=65535),
            nats_max_procs=env.integer("LLMSCOPE_NATS_MAX_PROCS", NATS_MAX_PROCS, min=0),
            pg_port=env.integer("LLMSCOPE_PG_PORT", 5432, min=1, max=65535),
            sim_port=env.integer("LLMSCOPE_SIM_PORT", 11500, min=1, max=65535),
            simulator=simulator,
            services=services,
            metrics_ports={service: p for service, p in metrics_ports.items() if p},
            charts_bucket=env.text("LLMSCOPE_SPC_CHARTS_BUCKET", subjects.SPC_CHARTS_BUCKET),
            state_bucket=env.text("LLMSCOPE_SPC_STATE_BUCKET", subjects.SPC_STATE_BUCKET),
        )


def load_or_create_secret(data_dir: Path, name: str) -> str:
    """A secret kept in ``data_dir/name``, generated on first run (readable by the owner only)."""
    path = data_dir / name
    if path.exists():
        path.chmod(0o600)  # an older LLMscope, or a hand-made file, may have left it wider
        value = path.read_text().strip()
        if value:
            return value
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value


def load_or_create_api_key(data_dir: Path) -> str:
    """The API key kept in the data directory, generated on first run (readable by the owner only)."""
    return load_or_create_secret(data_dir, "api_key")


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Child:
    """One supervised process: a service, nats-server or PostgreSQL.

    ``launch`` starts it (raising when it cannot) and ``halt`` stops it gracefully.
    """

    name: str
    launch: Callable[[], subprocess.Popen[bytes]]
    halt: Callable[[subprocess.Popen[bytes]], None] = _terminate
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    failure: str = ""
    """Why the last start failed ("" when it did not)."""

    @classmethod
    def service(cls, name: str, argv: list[str], env: dict[str, str]) -> Child:
        def launch() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv, env=env, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM)
            )

        return cls(name=name, launch=launch)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.failure = ""
        try:
            self.proc = self.launch()
        except Exception as exc:  # any reason it could not start is a reason to retry later
            self.proc = None
            self.failure = str(exc) or type(exc).__name__
            raise

    def why_down(self) -> str:
        if self.failure:
            return f"failed to start ({self.failure})"
        code = None if self.proc is None else self.proc.returncode
        return f"exited with code {code}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.halt(self.proc)


_SETUP_ARGV = [sys.executable, "-m", "llmscope.stack.cli", "setup", "--wait", "60"]


class Stack:
    """Embedded servers plus supervised children; stops everything it started."""

    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.infra: list[Child] = []
        """The embedded servers, in start order."""
        self.children: list[Child] = []
        self.service_nats_urls: dict[str, str] = {}
        """Each service's own NATS URL (with its password) on the embedded server."""
        self._setup_env: dict[str, str] | None = None
        """The environment :meth:`run_setup` ran with: it runs again after nats-server restarts."""
        # A plain flag, not a threading.Event: Ctrl-C's handler sets it, and a handler that took
        # the Event's lock while the interrupted supervisor held it (inside Event.wait) waited for
        # itself for good: `up` then ignored Ctrl-C (once in CI, in 60 of 100 tries of a tight
        # wait loop). Setting an attribute takes no lock.
        self._stopping = False
        self.poll_s = 0.5
        """How often :meth:`supervise` looks at its children and at the flag."""
        self.config_error = ""
        """The service that exited with a configuration error (code 2), which stopped the stack."""

    def check_ports(self) -> None:
        s = self.settings
        wanted = [(s.port, "the API and dashboard", "LLMSCOPE_PORT")]
        if "sim" in s.services:
            wanted.append((s.sim_port, "the simulated LLM endpoint", "LLMSCOPE_SIM_PORT"))
        for service, variable, _ in METRICS_PORTS:
            if service in s.metrics_ports:
                wanted.append((s.metrics_ports[service], f"the {service}'s /metrics", variable))
        if s.nats_url is None:
            wanted.append((s.nats_port, "the embedded NATS server", "LLMSCOPE_NATS_PORT"))
        if s.database_url is None:
            wanted.append((s.pg_port, "the embedded PostgreSQL server", "LLMSCOPE_PG_PORT"))
        for port, what, variable in wanted:
            if port_in_use(port, "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host):
                raise PortInUseError(port, what, variable)

    def start_infrastructure(self) -> tuple[str, str]:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        # Owner only; as root the embedded PostgreSQL's group gets traverse permission back.
        s.data_dir.chmod(0o700)
        nats_url = s.nats_url
        if nats_url is None:
            nats = EmbeddedNats(
                s.data_dir / "nats",
                s.nats_port,
                users={
                    user: load_or_create_secret(s.data_dir, _nats_secret(user)) for user in permissions.USERS
                },
                permissions=permissions.service_permissions(s.charts_bucket, s.state_bucket),
                tie_to_parent=True,
                max_procs=s.nats_max_procs,
            )
            self.nats = nats
            self._start_infra("nats-server", nats.start, lambda: nats.process, nats.stop)
            nats_url = nats.url_for(NATS_USER)
            self.service_nats_urls = {user: nats.url_for(user) for user in permissions.SERVICE_USERS}
            print(f"  nats      embedded at {nats.url} (data in {s.data_dir / 'nats'})", flush=True)
        database_url = s.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(
                s.data_dir / "pg",
                s.pg_port,
                password=load_or_create_secret(s.data_dir, "pg_password"),
                tie_to_parent=True,
            )
            self.postgres = postgres
            self._start_infra("postgres", postgres.start, lambda: postgres.process, postgres.stop)
            database_url = postgres.create_database("llmscope")
            shown = redact_url(database_url)
            print(f"  postgres  embedded at {shown} (data in {s.data_dir / 'pg'})", flush=True)
        return nats_url, database_url

    def _start_infra(
        self,
        name: str,
        start: Callable[[], object],
        process: Callable[[], subprocess.Popen[bytes] | None],
        stop: Callable[[], None],
    ) -> None:
        def launch() -> subprocess.Popen[bytes]:
            try:
                start()
            except BaseException:
                stop()  # a server that did not come up in time is not left behind
                raise
            proc = process()
            if proc is None:
                raise RuntimeError(f"{name} did not start")
            return proc

        child = Child(name=name, launch=launch, halt=lambda _proc: stop())
        child.start()
        self.infra.append(child)

    def write_client_env(self, nats_url: str, database_url: str, api_key: str) -> Path:
        """What a command run from another terminal needs to reach this stack (a secret)."""
        path = self.settings.data_dir / "client.env"
        write_private(
            path,
            "# Written by `llmscope up` at every start: set -a; . ./.llmscope/client.env; set +a\n"
            f"NATS_URL={nats_url}\nDATABASE_URL={database_url}\nLLMSCOPE_API_KEY={api_key}\n",
        )
        return path

    def child_env(self, nats_url: str, database_url: str, api_key: str) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            NATS_URL=nats_url,
            DATABASE_URL=database_url,
            LLMSCOPE_API_KEY=api_key,
            LLMSCOPE_HOST=s.host,
            LLMSCOPE_PORT=str(s.port),
            LLMSCOPE_PUBLIC_URL=env.get("LLMSCOPE_PUBLIC_URL", f"http://{_display_host(s.host)}:{s.port}"),
            PYTHONUNBUFFERED="1",
        )
        # The prober's unpublished telemetry outlives a kill of the prober (prober/journal.py).
        env.setdefault("LLMSCOPE_PROBER_OUTBOX_DIR", str(s.data_dir / "prober"))
        for service, variable, _ in METRICS_PORTS:
            env[variable] = str(s.metrics_ports.get(service, 0))
            env.setdefault(variable.replace("_PORT", "_HOST"), s.host)
        if "sim" in s.services:
            env.setdefault("LLMSCOPE_SIM_HOST", "127.0.0.1")
            env["LLMSCOPE_SIM_PORT"] = str(s.sim_port)
            env.setdefault("LLMSCOPE_SIM_URL", f"http://127.0.0.1:{s.sim_port}")
            if self.demo_profile:
                for variable, value in DEMO_PROFILE.items():
                    env.setdefault(variable, value)
                if "api" in s.services and env.get("LLMSCOPE_SIM_TRAFFIC_RPS") != "0":
                    for variable, value in DEMO_TRAFFIC.items():
                        env.setdefault(variable, value)
                    env.setdefault("LLMSCOPE_SIM_TRAFFIC_OTLP_URL", f"{_api_url(s)}/v1/traces")
                    if not (env.get("LLMSCOPE_INGEST_KEY") or env.get("LLMSCOPE_OTLP_INGEST_KEY")):
                        env["LLMSCOPE_INGEST_KEY"] = load_or_create_secret(s.data_dir, "ingest_key")
        return env

    @property
    def demo_profile(self) -> bool:
        """Probing only the built-in simulator: arm the charts in minutes, not hours."""
        configured = any(os.environ.get(v) for v in ("LLMSCOPE_PROBER_CONFIG", "LLMSCOPE_TARGETS"))
        return "sim" in self.settings.services and not configured

    def service_env(self, name: str, env: dict[str, str]) -> dict[str, str]:
        """``env`` with the service's own NATS user on the embedded server (the simulator, which
        uses no NATS, gets none: not the operator's password either)."""
        if not self.service_nats_urls:
            return env  # the operator's own NATS_URL
        own = {k: v for k, v in env.items() if k != "NATS_URL"}
        url = self.service_nats_urls.get(name)
        if url is None:
            return own
        own["NATS_URL"] = url
        # Its user may not create or change streams: run_setup made them, the service checks.
        own["LLMSCOPE_MANAGE_STREAMS"] = "false"
        if name == "prober":
            own["LLMSCOPE_PROBER_MANAGE_STREAMS"] = "false"
        return own

    def run_setup(self, env: dict[str, str]) -> None:
        """``llmscope setup`` as the setup user on the embedded NATS, before any service: the
        services' users may not create or change streams. Raises CalledProcessError if it fails
        (its own log says why). With the operator's own NATS the services manage their streams
        as before, unless its environment says LLMSCOPE_MANAGE_STREAMS=false."""
        if self.nats is None:
            return
        setup_env = {**env, "NATS_URL": self.nats.url_for(permissions.SETUP)}
        self._setup_env = setup_env
        subprocess.run(_SETUP_ARGV, env=setup_env, check=True)

    def rerun_setup(self) -> None:
        """``llmscope setup`` again, in the background, after the embedded nats-server restarted:
        whatever the restart lost (a stream or bucket kept in memory, as the SPC engine's
        members bucket was before it went on disk) is made again, which the services' users may
        not do (the engine's replicas could not announce themselves until then)."""
        setup_env = self._setup_env
        if setup_env is None:
            return

        def run() -> None:
            done = subprocess.run(_SETUP_ARGV, env=setup_env, check=False)
            if done.returncode != 0:
                code = done.returncode
                print(f"llmscope: setup after the nats-server restart exited with code {code}", flush=True)

        threading.Thread(target=run, name="llmscope-setup", daemon=True).start()

    def start_children(self, env: dict[str, str]) -> None:
        launcher = [sys.executable, "-m", "llmscope.stack.cli"]
        for name in ALL_SERVICES:
            if name not in self.settings.services:
                continue
            if name == "prober" and "sim" in self.settings.services:
                self.wait_for_simulator(env)
            if self._stopping:
                return
            argv = [*launcher, name, *(["serve"] if name == "sim" else [])]
            child = Child.service(name, argv, self.service_env(name, env))
            child.start()
            self.children.append(child)

    def wait_for_simulator(self, env: dict[str, str], timeout: float = 30.0) -> bool:
        """Wait until the simulator accepts connections: a prober started first probed it while
        it was still starting, and a fresh install charted those refused probes as failures."""
        address = (_display_host(env.get("LLMSCOPE_SIM_HOST", "127.0.0.1")), self.settings.sim_port)
        sim = next((c for c in self.children if c.name == "sim"), None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping and (sim is None or sim.running):
            try:
                with socket.create_connection(address, timeout=1):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def wait_for_api(self, timeout: float = 60.0) -> bool:
        url = f"http://{_display_host(self.settings.host)}:{self.settings.port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        return False

    def supervise(self) -> None:
        """Restart children that exit (embedded servers first), with backoff, until asked to stop.

        Runs on the main thread: the kernel's parent-death signal follows the forking thread.
        """
        while not self._stopping:
            time.sleep(self.poll_s)  # a signal's handler runs, and the sleep goes on (PEP 475)
            for child in [*self.infra, *self.children]:
                if child.running or self._stopping:
                    continue
                now = time.monotonic()
                if child in self.children and child.proc is not None and child.proc.returncode == 2:
                    # A service's configuration error (its one line, naming the variable, is
                    # above): no restart mends it, and restarting it for good buried that line
                    # under the failures of the services that need it.
                    print(
                        f"llmscope up: {child.name} refused its configuration (exit 2; its message"
                        " is above): stopping everything",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.config_error = child.name
                    self._stopping = True
                    return
                if child.next_start == 0.0:
                    # A child that ran a while before dying gets its backoff reset.
                    if now - child.started_at > 60:
                        child.restarts = 0
                    delay = min(2**child.restarts, 30)
                    child.next_start = now + delay
                    print(f"llmscope: {child.name} {child.why_down()}; restarting in {delay} s", flush=True)
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    # A failed start is reported by why_down() on the next round.
                    with contextlib.suppress(Exception):
                        child.start()
                        if child.name == "nats-server":
                            self.rerun_setup()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self) -> None:
        """Ask :meth:`supervise` to return; safe in a signal handler and from another thread."""
        self._stopping = True

    def on_signal(self, signum: int, _frame: object) -> None:
        """SIGINT's and SIGTERM's handler: :meth:`request_stop`, nothing that takes a lock."""
        self.request_stop()

    def stop(self) -> None:
        self._stopping = True
        for child in reversed(self.children):
            child.stop()
        for child in reversed(self.infra):
            child.stop()


def _nats_secret(user: str) -> str:
    """The file of ``user``'s NATS password in the data directory (the operator's is the one
    older versions generated for their single user)."""
    return "nats_password" if user == permissions.OPERATOR else f"nats_password_{user}"


def _api_url(s: UpSettings) -> str:
    return f"http://{_display_host(s.host)}:{s.port}"


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmscope up", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    try:
        settings = UpSettings.from_env(Env())
    except ConfigError as exc:
        return config_exit("up", exc)
    # Everything up and its children create (logs, data, keys) is readable by the owner only.
    os.umask(0o077)
    stack = Stack(settings)
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, stack.on_signal)
    signal.signal(signal.SIGTERM, stack.on_signal)
    try:
        stack.check_ports()
        print("LLMscope starting…", flush=True)
        nats_url, database_url = stack.start_infrastructure()
        api_key = settings.api_key or load_or_create_api_key(settings.data_dir)
        stack.write_client_env(nats_url, database_url, api_key)
        env = stack.child_env(nats_url, database_url, api_key)
        stack.run_setup(env)
        stack.start_children(env)
        if stack.demo_profile:
            # What runs, whether from the profile or from a variable set to override it.
            print(
                f"  demo      probing the built-in simulator every {env['LLMSCOPE_PROBER_INTERVAL_S']} s,"
                f" {env['LLMSCOPE_SPC_BASELINE_N']}-point baselines\n"
                + (
                    f"            simulated traffic {env['LLMSCOPE_SIM_TRAFFIC_RPS']} req/s traced to"
                    f" /v1/traces, {env.get('LLMSCOPE_SPC_TRAFFIC_BASELINE_MINUTES')}-minute baselines"
                    " (dashboard: Traffic)\n"
                    if env.get("LLMSCOPE_SIM_TRAFFIC_RPS", "0") != "0"
                    else ""
                )
                + "            (README: 'demo profile'); try llmscope sim inject shift --model llama3.1:8b",
                flush=True,
            )
        if "api" in settings.services:
            if stack.wait_for_api():
                base = f"http://{_display_host(settings.host)}:{settings.port}"
                host = _display_host(settings.host)
                ports = {"api": settings.port, **settings.metrics_ports}
                metrics = "\n             ".join(
                    f"http://{host}:{p}/metrics ({name})" for name, p in ports.items()
                )
                print(
                    f"\n  Dashboard  {base}/?key={api_key}\n  API        {base}/docs\n"
                    f"  API key    {api_key}\n"
                    f"  Metrics    {metrics}\n"
                    "\n  Ctrl-C stops everything.\n",
                    flush=True,
                )
            elif not stack.stopping:
                print(
                    "llmscope up: the API did not become healthy within 60 s; see its log above", flush=True
                )
        stack.supervise()
        print("\nLLMscope stopping…", flush=True)
        return 2 if stack.config_error else 0
    except (PortInUseError, RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        # An embedded server that cannot start: say why in one line, no traceback.
        print(f"llmscope up: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
