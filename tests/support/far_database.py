"""A distant database: a TCP front to the test's PostgreSQL that holds each new
connection a while before relaying it, as a distant server's handshakes
would, and records how many it held at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class FarDatabase:
    """See ``far_database``. ``url`` connects through it."""

    def __init__(self, url: str, delay_seconds: float) -> None:
        params = conninfo_to_dict(url)
        host, port = str(params.pop("host", "localhost")), int(params.pop("port", 5432))
        params.pop("hostaddr", None)
        self._upstream = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        self._delay_seconds = delay_seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = make_conninfo("", **params, host="127.0.0.1", port=str(self._listener.getsockname()[1]))
        self._lock = threading.Lock()
        self._held = 0
        self.most_held = 0  # connections held back at the same moment, at most
        self.opened = 0  # connections relayed
        self._sockets: list[socket.socket] = []

    def serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            self._held += 1
            self.most_held = max(self.most_held, self._held)
            self._sockets.append(client)
        time.sleep(self._delay_seconds)
        with self._lock:
            self._held -= 1
            self.opened += 1
        family = socket.AF_UNIX if isinstance(self._upstream, str) else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        with self._lock:
            self._sockets.append(server)
        try:
            server.connect(self._upstream)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@contextmanager
def far_database(url: str, *, delay_seconds: float) -> Iterator[FarDatabase]:
    """A TCP front to the database at ``url`` that holds each new connection
    for ``delay_seconds`` before relaying it (a distant server's round trips
    and handshakes), counting how many it held at once (``most_held``)."""
    far = FarDatabase(url, delay_seconds)
    threading.Thread(target=far.serve, daemon=True).start()
    try:
        yield far
    finally:
        far.close()
