"""Free-port discovery and clear reports of ports already taken."""

from __future__ import annotations

import collections
import socket
import threading

# Ports this process handed out recently. Once the probing socket is closed the kernel may give
# the same port to the next bind(0) (seen in CI: the simulator got the port just given to
# Postgres), so each answer is remembered and never given twice while it is likely still
# about to be bound by its caller.
_RECENT_LIMIT = 4096
_recent: collections.deque[int] = collections.deque(maxlen=_RECENT_LIMIT)
_recent_set: set[int] = set()
_lock = threading.Lock()


def _remember(port: int) -> None:
    if len(_recent) == _RECENT_LIMIT:
        _recent_set.discard(_recent[0])
    _recent.append(port)
    _recent_set.add(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A free port never returned before by this process (within the last few thousand)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: held open together while asked for, so the kernel cannot hand
    the same one out twice, and none this process handed out recently."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    with _lock:
        try:
            while len(ports) < n:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)  # held open (even when skipped) so bind(0) moves on
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
                if port not in _recent_set:
                    ports.append(port)
            for port in ports:
                _remember(port)
            return ports
        finally:
            for sock in socks:
                sock.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class PortInUseError(RuntimeError):
    """A port LLMscope must listen on is already taken."""

    def __init__(self, port: int, what: str, variable: str) -> None:
        super().__init__(
            f"port {port} for {what} is already in use; stop whatever listens there "
            f"(e.g. `lsof -i :{port}`) or set {variable} to another port"
        )
