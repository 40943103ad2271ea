"""Free-port discovery and clear reports of ports already taken."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
