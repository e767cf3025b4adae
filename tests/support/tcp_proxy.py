"""A fault-injecting TCP proxy on 127.0.0.1, to put between a service and what uses it (the
moto S3 server and a tracking server, say) and cut the link while both stay up.

`cut()` ends every open connection at once with a TCP reset (the peer sees "connection reset",
not a clean end of a response) and then, by default, refuses new ones: the listening socket is
closed, so a connect fails at once with "connection refused", as for a store that is down. With
``mode="blackhole"`` new connections are accepted and never answered instead, as behind a
firewall that drops packets: the peer waits for its own timeout. `restore()` listens again on the
same port and forwards again. `cut_after(n)` cuts as soon as ``n`` more bytes have gone from
clients to the target (the first bytes past ``n`` are not forwarded): a cut mid-upload.

Pure Python, one thread per connection; counters (`bytes_up`, `bytes_down`, `connections`) let
a test wait until traffic flows. Not for throughput: it moves some tens of MB/s.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

CHUNK = 64 * 1024
HOST = "127.0.0.1"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), not a clean FIN."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` (a free port) to ``target_host``:``target_port``."""

    MODES = ("refuse", "blackhole")

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._mode: str | None = None  # None: forwarding; else the mode of the cut
        self._generation = 0  # +1 at each cut: connections of an older one end
        self._pumps: dict[threading.Thread, int] = {}
        self._held: list[socket.socket] = []  # connections a black hole accepted
        self._cut_at_up: int | None = None  # `bytes_up` at which to cut
        self._cut_mode = "refuse"  # and how
        self._cut_done = threading.Event()
        self._closed = False
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0  # target -> client
        self.connections = 0  # accepted and forwarded since the start
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy-accept")
        self._acceptor.daemon = True
        self._acceptor.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the endpoint to give an HTTP client."""
        return f"http://{HOST}:{self.port}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pumps)

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    # --- faults --------------------------------------------------------------------------------

    def cut(self, mode: str = "refuse") -> None:
        """Reset every open connection, then refuse (or black-hole) new ones until `restore`.
        Returns once every forwarded connection is closed."""
        assert mode in self.MODES, mode
        with self._lock:
            self._cut_locked(mode)
            waiting = [thread for thread in self._pumps if thread is not threading.current_thread()]
        for thread in waiting:
            thread.join(timeout=5)

    def cut_after(self, upstream_bytes: int, mode: str = "refuse") -> threading.Event:
        """Cut as soon as ``upstream_bytes`` more bytes have been forwarded from clients to the
        target; the returned event is set when that happened."""
        assert mode in self.MODES, mode
        with self._lock:
            self._cut_at_up = self.bytes_up + upstream_bytes
            self._cut_mode = mode
            self._cut_done = threading.Event()
            return self._cut_done

    def restore(self) -> None:
        """Forward again, on the same port; connections a black hole held are reset."""
        with self._lock:
            self._mode = None
            self._cut_at_up = None
            held, self._held = self._held, []
            if self._listener is None and not self._closed:
                self._listener = self._listen(self.port)
        for sock in held:
            _reset(sock)

    @contextmanager
    def outage(self, mode: str = "refuse") -> Iterator[None]:
        """Cut inside the block, restored after it whatever happens."""
        self.cut(mode)
        try:
            yield
        finally:
            self.restore()

    def wait_until(self, condition: Callable[[TcpProxy], bool], timeout: float = 30) -> None:
        """Poll ``condition(proxy)`` (e.g. ``lambda p: p.bytes_up > 1_000_000``) until true."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"proxy condition not met in {timeout} s: {self.bytes_up} bytes up, "
                    f"{self.bytes_down} down, {self.connections} connections"
                )
            time.sleep(0.01)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.cut()
        self.restore()  # resets held connections; no listener once closed
        self._acceptor.join(timeout=5)

    # --- internals -----------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(64)
        return listener

    def _cut_locked(self, mode: str) -> None:
        self._mode = mode
        self._generation += 1
        self._cut_at_up = None
        self._cut_done.set()
        if mode == "refuse" and self._listener is not None:
            # Stop listening now: a close alone waits for the acceptor's select() to let go of
            # the socket, and a connection that arrives meanwhile would be accepted, then reset.
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            _reset(self._listener)
            self._listener = None

    def _accept_loop(self) -> None:
        while not self._closed:
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by a cut meanwhile
                continue
            self._accepted(client)

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            mode, generation = self._mode, self._generation
            if mode == "blackhole":
                self._held.append(client)
                return
        if mode is not None:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)  # the target itself is down: so is the link
            return
        thread = threading.Thread(
            target=self._pump, args=(client, upstream, generation), name="proxy-pump"
        )
        thread.daemon = True
        with self._lock:
            if generation != self._generation:
                _reset(client)
                _reset(upstream)
                return
            self.connections += 1
            self._pumps[thread] = generation
        thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket, generation: int) -> None:
        """Move bytes both ways until either side closes or a cut ends this connection."""
        peers = {client: upstream, upstream: client}
        abort = False
        try:
            for sock in peers:
                sock.settimeout(None)
            while True:
                if self._generation != generation:
                    abort = True
                    return
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for source in readable:
                    data = source.recv(CHUNK)
                    if not data:
                        return  # a clean close: pass it on as one
                    if source is client:
                        data, cut_now = self._count_up(data)
                        if data:
                            upstream.sendall(data)
                        if cut_now:
                            abort = True
                            return
                    else:
                        with self._lock:  # counted first: what the client has, is counted
                            self.bytes_down += len(data)
                        client.sendall(data)
        except OSError:
            abort = True
        finally:
            for sock in peers:
                if abort:
                    _reset(sock)
                else:
                    with suppress(OSError):
                        sock.close()
            with self._lock:
                self._pumps.pop(threading.current_thread(), None)

    def _count_up(self, data: bytes) -> tuple[bytes, bool]:
        """The part of ``data`` to forward, and whether to cut right after it."""
        with self._lock:
            limit = self._cut_at_up
            if limit is not None and self.bytes_up + len(data) >= limit:
                data = data[: limit - self.bytes_up]
                self.bytes_up += len(data)
                self._cut_locked(self._cut_mode)
                return data, True
            self.bytes_up += len(data)
            return data, False


@contextmanager
def tcp_proxy(target_port: int, target_host: str = HOST) -> Iterator[TcpProxy]:
    """A `TcpProxy` to ``target_port``, closed (every connection reset) on exit."""
    proxy = TcpProxy(target_port, target_host)
    try:
        yield proxy
    finally:
        proxy.close()
