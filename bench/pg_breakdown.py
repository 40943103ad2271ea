"""Where Postgres's CPU goes during a benchmark phase: per process type, WAL, tables.

``stack_bench.py --statements`` prints it for each probe phase beside pg_stat_statements:

- CPU and wake-ups per event of each kind of Postgres process, by the title Postgres gives it
  (``postgres: walwriter``, ``postgres: autovacuum worker``...; client backends by
  ``pg_stat_activity.application_name``, or ``client backend``). A thread samples every process
  of the cluster every 50 ms, so short-lived ones (autovacuum workers) are counted too;
- ``pg_stat_wal`` per committed transaction: WAL records, full-page images, bytes; the WAL's
  writes and fsyncs (``pg_stat_io``, object ``wal``); checkpoints in the phase;
- per table: rows inserted, updated (HOT, new page), autovacuums and autoanalyzes in the phase.

A backend reports its counters (tables, WAL, transactions) up to 10 s late once it is idle, so
the counts of a phase may hold some of the warm-up's and miss some of its own: they are printed
per telemetry row stored in the same counts (transactions, WAL, table rows), which those shifts
leave alone; CPU and wake-ups are the processes' own, per event of the phase.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil


def _voluntary_switches(pid: int) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    return total


def _kind(title: str, app: dict[int, str], pid: int) -> str:
    """A Postgres process's kind from its title (``postgres: <kind> ...``)."""
    rest = title.removeprefix("postgres:").strip()
    if not title.startswith("postgres:"):
        return "postmaster"
    for known in (
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum launcher",
        "autovacuum worker",
        "logical replication launcher",
        "io worker",
        "walsummarizer",
    ):
        if rest.startswith(known):
            return known
    name = app.get(pid, "")
    return f"backend {name}" if name else "backend (other)"


@dataclass
class ProcessSampler:
    """Samples the CPU times and voluntary switches of every process of the cluster."""

    postmaster: int
    interval: float = 0.05
    first: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    last: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    titles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: bool = False

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.postmaster)
            procs = [root, *root.children(recursive=False)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                now = (t.user, t.system, _voluntary_switches(p.pid))
                if p.pid not in self.titles:
                    self.titles[p.pid] = " ".join(p.cmdline())
                if p.pid not in self.first:
                    # A process born during the phase counts from zero; one there at the start
                    # from its first sample.
                    self.first[p.pid] = now if not self._started else (0.0, 0.0, 0)
                self.last[p.pid] = now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._started = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def by_kind(self, app: dict[int, str]) -> dict[str, tuple[float, float, int, int]]:
        """User and system CPU seconds, voluntary switches and processes seen, by kind."""
        out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0])
        for pid, (user1, sys1, sw1) in self.last.items():
            user0, sys0, sw0 = self.first[pid]
            row = out[_kind(self.titles.get(pid, ""), app, pid)]
            row[0] += user1 - user0
            row[1] += sys1 - sys0
            row[2] += sw1 - sw0
            row[3] += 1
        return {k: (v[0], v[1], int(v[2]), int(v[3])) for k, v in out.items()}


WAL = "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
WAL_IO = """SELECT coalesce(sum(writes), 0) AS writes, coalesce(sum(fsyncs), 0) AS fsyncs
            FROM pg_stat_io WHERE object = 'wal'"""
XACTS = "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
CHECKPOINTS = "SELECT num_timed + num_requested AS n, buffers_written FROM pg_stat_checkpointer"
TABLES = """SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_newpage_upd, autovacuum_count,
                   autoanalyze_count
            FROM pg_stat_user_tables"""
APPS = "SELECT pid, application_name, client_port FROM pg_stat_activity"


def _owners(clients: dict[str, int]) -> dict[int, str]:
    """Local TCP port -> the name of the client process that holds it."""
    out: dict[int, str] = {}
    for name, pid in clients.items():
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.laddr:
                    out[c.laddr.port] = name
    return out


async def _row(conn: asyncpg.Connection, sql: str) -> dict[str, int]:
    row = await conn.fetchrow(sql)
    return dict(row) if row is not None else {}


async def _snapshot(conn: asyncpg.Connection) -> dict[str, object]:
    # Statistics are cached per transaction and flushed by backends at most once a second.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return {
        "wal": await _row(conn, WAL),
        "io": await _row(conn, WAL_IO),
        "xacts": await _row(conn, XACTS),
        "ckpt": await _row(conn, CHECKPOINTS),
        "tables": {r["relname"]: dict(r) for r in await conn.fetch(TABLES)},
    }


@dataclass
class PgBreakdown:
    dsn: str
    postmaster: int
    sampler: ProcessSampler | None = None
    before: dict[str, object] = field(default_factory=dict)
    apps: dict[int, str] = field(default_factory=dict)
    after: dict[str, object] = field(default_factory=dict)
    clients: dict[str, int] = field(default_factory=dict)
    """Client processes by name (the API, the alerter...): their backends are named after them."""

    async def _apps(self, conn: asyncpg.Connection) -> None:
        owners = _owners(self.clients)
        for r in await conn.fetch(APPS):
            name = owners.get(r["client_port"]) or r["application_name"]
            if name:
                self.apps[r["pid"]] = name

    async def start(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            # Backends report their counters at most once a second (PGSTAT_MIN_INTERVAL): the
            # warm-up's last second lands first, then the phase starts from a settled count.
            await conn.execute("SELECT pg_sleep(1.2)")
            self.before = await _snapshot(conn)
            await self._apps(conn)
        finally:
            await conn.close()
        self.sampler = ProcessSampler(self.postmaster)
        self.sampler.start()

    async def stop(self) -> None:
        """End of the phase: the processes' CPU and the statistics taken now."""
        assert self.sampler is not None
        self.sampler.stop()
        conn = await asyncpg.connect(self.dsn)
        try:
            await self._apps(conn)
            await conn.execute("SELECT pg_sleep(1.2)")  # the phase's last second reported
            self.after = await _snapshot(conn)
        finally:
            await conn.close()

    async def report(self, n: int) -> None:
        assert self.sampler is not None
        after = self.after
        kinds = self.sampler.by_kind(self.apps)
        total = sum(v[0] + v[1] for v in kinds.values())
        print(f"  postgres processes: {1000 * total / n:.3f} ms/event in all (sampled every 50 ms)")
        print(f"  {'ms/event':>9} {'user':>6} {'system':>6} {'wake/ev':>8} {'procs':>5}  kind")
        for kind, (user, system, sw, procs) in sorted(kinds.items(), key=lambda kv: -kv[1][0] - kv[1][1]):
            print(
                f"  {1000 * (user + system) / n:>9.3f} {1000 * user / n:>6.3f} {1000 * system / n:>6.3f}"
                f" {sw / n:>8.2f} {procs:>5}  {kind}"
            )
        b, a = self.before, after

        def d(part: str, key: str) -> float:
            return float(a[part][key] - b[part][key])  # type: ignore[index]

        xacts = d("xacts", "xact_commit")
        recs, fpi, wbytes = d("wal", "wal_records"), d("wal", "wal_fpi"), d("wal", "wal_bytes")
        per = max(xacts, 1)
        tables: dict[str, dict[str, int]] = after["tables"]  # type: ignore[assignment]
        tables0: dict[str, dict[str, int]] = b["tables"]  # type: ignore[assignment]
        rows = tables.get("telemetry", {}).get("n_tup_ins", 0) - tables0.get("telemetry", {}).get(
            "n_tup_ins", 0
        )
        stored = max(rows, 1)
        print(
            f"  transactions committed (every client) {xacts / stored:.3f} per telemetry row stored"
            " (rolled back"
            f" {d('xacts', 'xact_rollback'):.0f}); checkpoints {d('ckpt', 'n'):.0f}"
            f" ({d('ckpt', 'buffers_written'):.0f} buffers)"
        )
        print(
            f"  WAL per transaction: {recs / per:.1f} records, {fpi / per:.2f} full-page images,"
            f" {wbytes / per:,.0f} bytes; per telemetry row stored {recs / stored:.1f} records,"
            f" {wbytes / stored:,.0f} bytes;"
            f" WAL writes {d('io', 'writes') / per:.2f} and fsyncs {d('io', 'fsyncs') / per:.2f}"
            " per transaction"
        )
        print(
            f"  {'table':<24} {'ins/row':>7} {'upd/row':>7} {'hot %':>6} {'newpage':>7} {'av':>3} {'aa':>3}"
        )
        tb: dict[str, dict[str, int]] = b["tables"]  # type: ignore[assignment]
        for name, row in sorted(after["tables"].items()):  # type: ignore[attr-defined]
            was = tb.get(name, dict.fromkeys(row, 0))
            ins = row["n_tup_ins"] - was["n_tup_ins"]
            upd = row["n_tup_upd"] - was["n_tup_upd"]
            if not ins and not upd:
                continue
            hot = row["n_tup_hot_upd"] - was["n_tup_hot_upd"]
            newpage = row["n_tup_newpage_upd"] - was["n_tup_newpage_upd"]
            print(
                f"  {name:<24} {ins / stored:>7.3f} {upd / stored:>7.3f} {100 * hot / max(upd, 1):>6.0f}"
                f" {newpage:>7} {row['autovacuum_count'] - was['autovacuum_count']:>3}"
                f" {row['autoanalyze_count'] - was['autoanalyze_count']:>3}"
            )
