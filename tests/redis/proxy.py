"""A small fault-injecting TCP proxy: forwards a client to a Redis server, and on request
swallows the next reply and drops the connection, so the client sees a lost reply after the
server has executed the command (what a timeout or a network cut does)."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["CuttingProxy"]


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._cuts = 0
        self._hang = False
        self.cut_replies = 0  # replies swallowed so far
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next_replies(self, count: int = 1, *, hang: bool = False) -> None:
        """The next ``count`` replies (from any connection) are swallowed: with their
        connection closed (a cut), or ``hang``: the connection stays open and says nothing
        more (the client times out)."""
        with self._lock:
            self._cuts += count
            self._hang = hang

    def _take_cut(self, request: bytes) -> str:
        """Whether to swallow the reply now arriving: "cut", "hang" or "". ``request``: what
        the client last sent on this connection (subclasses may aim at a command)."""
        with self._lock:
            if self._cuts:
                self._cuts -= 1
                self.cut_replies += 1
                return "hang" if self._hang else "cut"
            return ""

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            request = [b""]  # the client's latest request on this connection
            threading.Thread(target=self._pump, args=(client, upstream, False, request), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True, request), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool, request: list[bytes]) -> None:
        hung = False  # after a hang, this connection stays open and silent (as a stalled peer)
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not replies:
                    request[0] = data
                cut = self._take_cut(request[0]) if replies and not hung else ""
                if cut == "cut":
                    break  # the server did the work; the client never hears of it
                hung = hung or cut == "hang"
                if not hung:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
