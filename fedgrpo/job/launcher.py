"""Start fedgrpo services as separate processes on loopback ports.

``Federation`` is a context manager: ``start_*`` launches one service
(``python -m fedgrpo.cli <service> ...``) with its log in ``log_dir``, and
``wait_healthy`` blocks until each answers the gRPC health check; on exit
every process gets SIGTERM, then SIGKILL after a grace period. A service that
dies while starting raises with the tail of its log, so failures say why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedgrpo import serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    address: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Federation:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, command: str, args: list[str], env: dict[str, str] | None = None) -> Service:
        port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {})}
        argv = [sys.executable, "-m", "fedgrpo.cli", command, "--host", "127.0.0.1", "--port", str(port), *args]
        with open(log_path, "w") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        service = Service(name, f"127.0.0.1:{port}", process, log_path)
        self.services.append(service)
        return service

    def wait_healthy(self, service: Service, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with code {service.process.returncode} while starting; "
                    f"log {service.log_path}:\n{service.log_tail()}"
                )
            try:
                serving.wait_healthy(service.address, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{service.name} not healthy after {timeout:.0f}s; log {service.log_path}:\n{service.log_tail()}"
                    ) from None

    def stop(self, service: Service, grace: float = 10.0) -> None:
        if service.process.poll() is None:
            os.killpg(service.process.pid, signal.SIGTERM)
            try:
                service.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()

    def close(self) -> None:
        for service in reversed(self.services):
            try:
                self.stop(service)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
