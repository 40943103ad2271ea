"""Event ids (``new_id``): UUIDv7 in 32 lowercase hex digits, increasing, unique across processes."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from llmscope.proto.base import COUNTER_END, TimeOrderedIds, new_id

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _ids(n: int) -> list[str]:
    return [new_id() for _ in range(n)]


def test_an_id_is_32_lowercase_hex_digits_of_a_uuid7_of_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = _ids(1000)
    after = time.time_ns() // 1_000_000
    for i in ids:
        assert HEX32.match(i), i
        parsed = uuid.UUID(hex=i)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= int(i[:12], 16) <= after


def test_many_ids_are_unique_and_increase() -> None:
    ids = _ids(200_000)  # hundreds in each ms
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in itertools.pairwise(ids))


def _clock(readings_ms: list[int]) -> Iterator[int]:
    for ms in readings_ms:
        yield ms * 1_000_000


def test_ids_increase_when_the_clock_steps_back_and_within_one_ms() -> None:
    readings = [5_000, 5_000, 5_000, 4_000, 3_999, 5_000, 5_001, 4_500]
    clock = _clock(readings)
    ids = TimeOrderedIds(clock=lambda: next(clock))
    made = [ids() for _ in readings]
    assert all(a < b for a, b in itertools.pairwise(made)), made
    # The last ms seen is kept while the clock reads earlier.
    assert [int(i[:12], 16) for i in made] == [5_000] * 6 + [5_001] * 2


def test_a_counter_at_its_end_moves_the_time_on() -> None:
    starts = iter([b"\xff" * 6, b"\x00" * 6])
    counter_at_end = TimeOrderedIds(
        clock=lambda: 7_000_000_000, urandom=lambda n: next(starts) if n == 6 else b"\0" * n
    )
    first = counter_at_end()
    counter_at_end._counter = COUNTER_END - 1  # as after 2**41 ids in one ms
    second = counter_at_end()
    assert first < second
    assert int(second[:12], 16) == 7_001


# A process started afresh: waits for a line on stdin, then makes its ids and prints them.
CHILD = (
    "import sys; from llmscope.proto.base import new_id; sys.stdin.readline();"
    " print('\\n'.join(new_id() for _ in range({n})))"
)


def _assert_apart_yet_at_once(made: list[list[str]]) -> None:
    every = [i for ids in made for i in ids]
    assert len(set(every)) == len(every)
    # They made ids in the same milliseconds: time alone would not keep them apart.
    ms = [{i[:12] for i in ids} for ids in made]
    assert any(a & b for a, b in itertools.combinations(ms, 2))


def test_ids_of_processes_started_afresh_at_once_do_not_collide() -> None:
    n = 50_000
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(n=n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        mine = _ids(n)
        outputs = [child.communicate(timeout=120)[0].split() for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert [len(o) for o in outputs] == [n] * 3
    _assert_apart_yet_at_once([mine, *outputs])


def _forked(conn: Any, n: int) -> None:
    conn.recv()
    conn.send(_ids(n))


def test_ids_of_forked_processes_do_not_collide() -> None:
    # A forked child starts with its parent's counter: it must draw its own.
    n = 50_000
    new_id()
    ctx: Any = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(3)]
    children = [ctx.Process(target=_forked, args=(theirs, n)) for _, theirs in pipes]
    for child in children:
        child.start()
    try:
        for ours, _ in pipes:
            ours.send("go")
        mine = _ids(n)
        made = [mine] + [ours.recv() for ours, _ in pipes]
    finally:
        for child in children:
            child.join(timeout=60)
            if child.exitcode is None:
                child.kill()
                child.join()
    assert all(child.exitcode == 0 for child in children)
    _assert_apart_yet_at_once(made)


def test_a_forked_child_draws_its_own_counter_start_in_the_same_ms() -> None:
    starts = iter([b"\x00" * 6, b"\xff" * 6])
    ids = TimeOrderedIds(clock=lambda: 9_000_000_000, urandom=lambda n: next(starts) if n == 6 else b"\0" * n)
    parent = ids()
    ids.reseed()  # what the fork hook does in the child
    child = ids()
    assert parent[:12] == child[:12]
    assert parent[13:16] == "000"
    assert child[13:16] == "7ff"  # the start drawn anew (41 bits), not the parent's counter + 1
