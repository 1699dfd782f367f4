"""Count the bytes an orchestrator exchanges with a reward client, on the wire.

``ByteCountingRelay(target, host="127.0.0.1", port=0)`` is a plain TCP relay:
``start()`` binds and listens (port 0 picks a free port) and serves in daemon
threads; hand ``relay.address`` ("host:port") to the orchestrator instead of
the reward client's address ``target``. Each accepted connection gets its own
connection to ``target`` and bytes are copied both ways unchanged, so gRPC
(HTTP/2 over TCP) works through it as is.

``bytes_to_target`` counts what the caller sent (requests), ``bytes_from_target``
what came back (responses): cumulative over all connections, thread-safe, raw
TCP payload (protobuf plus HTTP/2 framing, headers, pings, window updates). A
chunk is counted when read from one side, just before it is written to the
other. ``snapshot()`` reads both at once as ``(to_target, from_target)``; the
bytes of one training step are the difference of the snapshots around it.

Concurrent connections are served. A half-close is passed on; a reset or error
on either side ends that connection only. If ``target`` is down the incoming
connection is closed at once (a gRPC caller sees UNAVAILABLE) and later
connections are still served. ``close()`` stops listening, closes open
connections and joins the threads; counters stay readable. With
``record=True`` it also keeps every byte that crossed, per direction
(``recorded()`` -> ``(to_target, from_target)``), for tests that check what
a plaintext exchange carried (e.g. that no label ever crosses). A context manager
(``with`` starts it if needed, then closes it). ``relay_all(targets)`` starts
one relay per target. Standard library only.
"""
from __future__ import annotations

import contextlib
import socket
import threading

_CHUNK = 64 * 1024


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _shutdown(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class ByteCountingRelay:
    def __init__(
        self, target: str, host: str = "127.0.0.1", port: int = 0, connect_timeout: float = 5.0, record: bool = False
    ):
        self.target = target
        self._record = record
        self._recorded = [bytearray(), bytearray()]  # [from_target, to_target], with record
        self._target = _split(target)
        self._bind = (host.strip("[]"), port)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._counts = [0, 0]  # [from_target, to_target], indexed by direction
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.address = ""

    @property
    def bytes_to_target(self) -> int:
        return self.snapshot()[0]

    @property
    def bytes_from_target(self) -> int:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self._counts[True], self._counts[False]

    def recorded(self) -> tuple[bytes, bytes]:
        """Every byte that crossed so far, (to target, from target); empty unless ``record``."""
        with self._lock:
            return bytes(self._recorded[True]), bytes(self._recorded[False])

    def start(self) -> ByteCountingRelay:
        if self._listener is not None or self._closed:
            raise RuntimeError("relay already started")
        family = socket.AF_INET6 if ":" in self._bind[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self._bind)
        listener.listen(64)
        self._listener = listener
        host, port = listener.getsockname()[:2]
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self._spawn(self._accept_loop)
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            socks = list(self._sockets)
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wake the blocked accept(); it sees _closed, stops
                socket.create_connection(self._listener.getsockname()[:2], timeout=1.0).close()
            self._listener.close()
        _shutdown(*socks)
        for _ in range(2):  # 2nd pass: connections the accept thread handed off while closing
            with self._lock:
                threads = [t for t in self._threads if t is not threading.current_thread()]
            for t in threads:
                t.join(timeout=self._connect_timeout + 1.0)

    def __enter__(self) -> ByteCountingRelay:
        return self if self._listener is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, fn, *args) -> threading.Thread:
        t = threading.Thread(target=fn, args=args, name=f"wire-relay-{self.target}", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._sockets.add(conn)
            self._spawn(self._serve, conn)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            upstream = socket.create_connection(self._target, timeout=self._connect_timeout)
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    return
                self._sockets.add(upstream)
            back = self._spawn(self._pump, upstream, client, False)
            self._pump(client, upstream, True)
            back.join()
        except OSError:
            pass  # target down: closing the incoming connection tells the caller
        finally:
            with self._lock:
                self._sockets.difference_update({client, upstream})
            for s in filter(None, (client, upstream)):
                s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, to_target: bool) -> None:
        try:
            while data := src.recv(_CHUNK):
                with self._lock:
                    self._counts[to_target] += len(data)
                    if self._record:
                        self._recorded[to_target] += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            _shutdown(src, dst)  # reset or closed: end both directions


def relay_all(targets: list[str], host: str = "127.0.0.1") -> list[ByteCountingRelay]:
    relays: list[ByteCountingRelay] = []
    try:
        for target in targets:
            relays.append(ByteCountingRelay(target, host).start())
    except BaseException:
        for relay in relays:
            relay.close()
        raise
    return relays
