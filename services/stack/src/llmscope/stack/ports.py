"""Free-port discovery and clear reports of ports already taken."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: held open together while asked for, so the kernel cannot hand
    the same one out twice (separate ``free_port`` calls can, once the first socket is closed)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
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
