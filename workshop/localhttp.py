"""Small helpers for local HTTP services: the UIs' servers in tests and scripts."""

import socket
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP server accepts connections on `host:port` now."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_until_up(url: str, timeout: float = 180) -> None:
    """Poll `url` until it answers; TimeoutError naming it otherwise."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")
