"""A loopback TCP proxy for link-fault tests: forwards bytes both ways until told to blackhole them.

``blackhole()`` simulates a network partition: the proxy stops forwarding in both directions but
closes nothing, so each side sees a half-open link (its writes vanish, no FIN, no RST) and must
notice by itself (keepalive pings, deadlines). New connections are accepted but go nowhere (like a
SYN that is never answered). ``heal()`` resumes forwarding: bytes held in the socket buffers then
arrive, as after a real partition when TCP retransmits, and held connection attempts proceed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0  # client connections accepted so far
        self.forwarded_bytes = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        """Stop forwarding (nothing is closed)."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again, including what piled up meanwhile."""
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(s)
        return s

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connect, args=(self._track(client),), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a connection attempt during a partition hangs until it heals
        if self._closed.is_set():
            return
        try:
            upstream = self._track(socket.create_connection(self.target, timeout=5))
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                self._flowing.wait()
                readable, _, _ = select.select([src], [], [], 0.2)
                if not readable or not self._flowing.is_set():
                    continue
                data = src.recv(1 << 16)
                if not data:  # the sender closed: pass the FIN on, the other direction drains by itself
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
                self.forwarded_bytes += len(data)
        except (OSError, ValueError):  # a reset on either side (or the proxy closed): reset the other one too
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
