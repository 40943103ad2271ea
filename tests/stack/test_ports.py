"""Free ports for the stack's test harnesses."""

from __future__ import annotations

import socket

from llmscope.stack.ports import free_port, free_ports


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64  # asked together: never the same port twice
    for port in ports[:8]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_separate_asks_never_repeat_a_port() -> None:
    # One at a time, as most fixtures ask: the kernel may reuse a just-closed port, we may not.
    ports = [free_port() for _ in range(200)] + free_ports(50)
    assert len(set(ports)) == 250
