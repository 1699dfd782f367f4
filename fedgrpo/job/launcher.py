"""Start fedgrpo services as separate processes on loopback ports.

``Federation`` is a context manager: ``start_*`` launches one service
(``python -m fedgrpo.cli <service> ...``) with its log in ``log_dir``, and
``wait_healthy`` blocks until each answers the gRPC health check; on exit
every process gets SIGTERM, then SIGKILL after a grace period. A service that
dies while starting raises with the tail of its log, so failures say why.

Transport: with ``certs`` (a folder written by ``fedgrpo certs init``) every
service gets its own identity, ``<certs>/<identity>.crt``, and speaks mutual
TLS; without, every service is started with ``--plaintext`` (development on
loopback). An orchestrator also gets a free ``--federation-port`` for
reward clients that join.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedgrpo import certs as pki
from fedgrpo import serving
from fedgrpo.security import Identity

_PORTS_LOW, _PORTS_PER_WORKER = 10000, 2500
_next_port: list[int] = []


def free_port() -> int:
    """A free loopback port for a service to bind later, from below the ephemeral range.

    Port 0 would do at the moment of asking, but a service binds its port seconds or minutes later (an
    orchestrator after loading vLLM and probing), and in between any outgoing connection on the host may
    take an ephemeral port. Ports here come from 10000-19999, a block of 2500 per pytest-xdist worker
    (``PYTEST_XDIST_WORKER`` gw0, gw1, ...), handed out in turn within the block, so neither connections
    nor a parallel worker take them first.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = _PORTS_LOW + (int(worker) % 4 if worker.isdigit() else 0) * _PORTS_PER_WORKER
    if not _next_port:
        _next_port.append(random.randrange(_PORTS_PER_WORKER))
    for _ in range(_PORTS_PER_WORKER):
        port = block + _next_port[0] % _PORTS_PER_WORKER
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {block}-{block + _PORTS_PER_WORKER - 1}")


@dataclass
class Service:
    name: str
    address: str
    process: subprocess.Popen
    log_path: Path
    # The orchestrator's port for joining reward clients ("" for other services).
    federation_address: str = ""
    env: dict[str, str] = field(default_factory=dict)

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
    # A `fedgrpo certs init` folder: mutual TLS with one identity per service; None: plaintext.
    certs: Path | None = None

    def transport_args(self, identity: str) -> list[str]:
        if self.certs is None:
            return ["--plaintext"]
        files = pki.Identity.in_dir(self.certs, identity)
        return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]

    def identity(self, name: str = "orchestrator") -> Identity | None:
        """The TLS identity ``name`` to dial services with (None with plaintext)."""
        if self.certs is None:
            return None
        return Identity.in_dir(self.certs, name)

    def start(
        self, name: str, command: str, args: list[str], env: dict[str, str] | None = None, port: int | None = None,
        identity: str | None = None, wrapper: list[str] | None = None,
    ) -> Service:
        """Start ``fedgrpo <command>`` as ``name`` (its TLS identity unless ``identity`` is given).

        ``wrapper`` prefixes the command, e.g. ``["ip", "netns", "exec", "hostA"]`` to run it on
        another (simulated) host.
        """
        port = port or free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {})}
        extra, federation = [], ""
        if command == "orchestrator" and not any(a.startswith("--federation-port") for a in args):
            federation = f"127.0.0.1:{free_port()}"
            extra = ["--federation-port", federation.rsplit(":", 1)[1]]
        argv = [
            *(wrapper or []), sys.executable, "-m", "fedgrpo.cli", command, "--host", "127.0.0.1", "--port", str(port),
            *self.transport_args(identity or name), *extra, *args,
        ]
        with open(log_path, "a") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        service = Service(name, f"127.0.0.1:{port}", process, log_path, federation, full_env)
        self.services.append(service)
        return service

    def restart(self, service: Service, kill: bool = False) -> Service:
        """Stop ``service`` (SIGKILL with ``kill``) and start it again with the same command and port."""
        if kill:
            self.kill(service)
        else:
            self.stop(service)
        argv = list(service.process.args)  # type: ignore[arg-type]
        with open(service.log_path, "a") as log:
            log.write(f"\n----- restarted ({'SIGKILL' if kill else 'SIGTERM'}) -----\n")
            log.flush()
            service.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=service.env, start_new_session=True
            )
        return service

    def kill(self, service: Service) -> None:
        """SIGKILL the service's whole process group, as a crash would."""
        if service.process.poll() is None:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()

    def wait_healthy(self, service: Service, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with code {service.process.returncode} while starting; "
                    f"log {service.log_path}:\n{service.log_tail()}"
                )
            try:
                serving.wait_healthy(
                    service.address, timeout=min(2.0, max(0.1, deadline - time.monotonic())), identity=self.identity()
                )
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{service.name} not healthy after {timeout:.0f}s; "
                        f"log {service.log_path}:\n{service.log_tail()}"
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
