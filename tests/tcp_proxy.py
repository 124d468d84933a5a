"""Network helpers shared by test tiers: a loopback TCP relay."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Relays 127.0.0.1:<port> to a target; `freeze()` silently stops relaying on open connections.

    A frozen connection stays open and says nothing: exactly what a watch stream looks like when a
    NAT table or load balancer drops it without a RST. New connections are relayed normally.
    """

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._frozen: set[int] = set()
        self._conns: list[tuple[socket.socket, socket.socket, int]] = []
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            with self._lock:
                conn_id = self._next
                self._next += 1
                self._conns.append((client, upstream, conn_id))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, conn_id), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn_id: int) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                frozen = conn_id in self._frozen
            if frozen:
                continue  # swallow: the peer never hears about it
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def freeze(self) -> int:
        """Blackhole every connection open now; returns how many."""
        with self._lock:
            ids = {c[2] for c in self._conns}
            self._frozen |= ids
            return len(ids)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for client, upstream, _ in self._conns:
                for s in (client, upstream):
                    with contextlib.suppress(OSError):
                        s.close()
