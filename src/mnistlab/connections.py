"""The server's connections: a waiting room that reads requests, and a few threads that answer them.

A thread per connection lets idle or slow clients take the server: each holds a thread (and
its stack) for as long as it likes. Here one thread, with a selector, watches every open
connection and reads what arrives without blocking; only a complete request (its head and,
up to the body limit, its body) goes to one of a fixed number of handler threads. So:

- an idle connection costs a socket and a few hundred bytes, and is closed after `timeout`;
- a request must arrive whole within `timeout` of its first byte (a deadline per request,
  not per read): a client that trickles a byte every few seconds is cut off all the same;
- at most `connections` sockets are open, kept under the process's file limit; when full,
  the connection waiting longest (an idle one first) is closed to let a new one in.
"""

from __future__ import annotations

import collections
import re
import resource
import selectors
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

MAX_LINE = 65536  # the longest request line or header line, as http.server allows
MAX_HEAD = 4 * MAX_LINE  # the whole head: request line and headers
FILES_KEPT = 64  # file descriptors left for everything else (models, the test set, logs)
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d{1,18})[ \t]*\r?$", re.I | re.M)


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    address: tuple
    buffer: bytearray = field(default_factory=bytearray)
    entered: float = field(default_factory=time.monotonic)  # when it came (back) to the waiting room
    started: float | None = None  # when the first byte of the request under way arrived

    def deadline(self, timeout: float) -> float:
        return (self.started if self.started is not None else self.entered) + timeout


def request_complete(data: bytes | bytearray, max_body: int) -> bool | int:
    """True when `data` holds a whole request head and its body (a body over `max_body` is not
    waited for: the handler refuses it); else False; or an HTTP status when the head is too long."""
    end = data.find(b"\r\n\r\n")
    end = (end + 4) if end >= 0 else -1
    if end < 0:
        bare = data.find(b"\n\n")  # lines ended by \n alone, which http.server accepts too
        end = bare + 2 if bare >= 0 else -1
    if end < 0:
        first_line = data.find(b"\n")
        if (first_line < 0 and len(data) > MAX_LINE) or first_line > MAX_LINE:
            return 414
        return 431 if len(data) > MAX_HEAD else False
    lengths = _CONTENT_LENGTH.findall(bytes(data[:end]))
    if len(lengths) != 1 or int(lengths[0]) > max_body:  # none, several, or too long: the handler answers
        return True
    return len(data) >= end + int(lengths[0])


def connection_limit(wanted: int) -> int:
    """`wanted`, or fewer where the process may not open that many files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - FILES_KEPT))


class WaitingRoom:
    """Watches the open connections from one thread; hands each complete request to `answer(connection)`
    on one of `handlers` threads. `refuse(connection, status)` answers a request that cannot be read;
    `log` gets a line per request cut short."""

    def __init__(self, timeout: float, connections: int, handlers: int, max_body: int, answer, refuse, log):
        self.timeout, self.limit, self.max_body = timeout, connection_limit(connections), max_body
        self.answer, self.refuse, self.log = answer, refuse, log
        self.pool = ThreadPoolExecutor(handlers, thread_name_prefix="handler")
        self.selector = selectors.DefaultSelector()
        self.waiting: collections.OrderedDict[socket.socket, Connection] = collections.OrderedDict()
        self.busy = 0  # connections with a handler
        self.arrivals: list[Connection] = []
        self.lock = threading.Lock()
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.selector.register(self.wake_reader, selectors.EVENT_READ)
        self.closed = False
        self.thread = threading.Thread(target=self.run, name="waiting-room", daemon=True)
        self.thread.start()

    # --- from other threads --------------------------------------------------------------------

    def add(self, connection: Connection) -> None:
        """A new connection, or one back from its handler for its next request (keep-alive)."""
        with self.lock:
            self.arrivals.append(connection)
        self.wake()

    def make_room(self) -> None:
        """The process ran out of files: close the connection waiting longest."""
        with self.lock:
            self.arrivals.append(None)
        self.wake()

    def wake(self) -> None:
        try:
            self.wake_writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already, or the room is closed

    def close(self) -> None:
        self.closed = True
        self.wake()
        self.thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for connection in list(self.waiting.values()):
            self.drop(connection)
        self.selector.close()
        self.wake_reader.close()
        self.wake_writer.close()

    # --- the room's own thread -----------------------------------------------------------------

    def run(self) -> None:
        while not self.closed:
            try:
                self.wait_and_read()
            except Exception as e:  # noqa: BLE001 - a bug here must not leave every connection unread
                self.log("".join(traceback.format_exception(e)).rstrip())

    def wait_and_read(self) -> None:
        now = time.monotonic()
        soonest = min((c.deadline(self.timeout) for c in self.waiting.values()), default=now + 1.0)
        for key, _ in self.selector.select(max(0.0, min(soonest - now, 1.0))):
            if key.fileobj is self.wake_reader:
                self.take_arrivals()
            elif key.fileobj in self.waiting:  # not closed meanwhile, by an eviction in this same round
                self.read(self.waiting[key.fileobj])
        self.expire(time.monotonic())

    def take_arrivals(self) -> None:
        try:
            while self.wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self.lock:
            arrivals, self.arrivals = self.arrivals, []
        for connection in arrivals:
            if connection is None:
                self.evict()
                continue
            connection.entered, connection.started = time.monotonic(), (time.monotonic() if connection.buffer else None)
            if len(self.waiting) + self.open_elsewhere() >= self.limit and not self.evict():
                self.drop(connection)  # every other one is being answered: this one cannot wait
                continue
            connection.sock.setblocking(False)
            self.waiting[connection.sock] = connection
            self.selector.register(connection.sock, selectors.EVENT_READ)
            if connection.buffer:  # a request that came with the last one (pipelined)
                self.check(connection)

    def open_elsewhere(self) -> int:
        with self.lock:
            return self.busy

    def evict(self) -> bool:
        """Close the connection waiting longest, an idle one first; False when none waits."""
        victim = next((c for c in self.waiting.values() if not c.buffer), None)
        victim = victim or next(iter(self.waiting.values()), None)
        if victim is None:
            return False
        self.drop(victim)
        return True

    def read(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as e:
            self.drop(connection, f"connection closed by the client ({type(e).__name__})")
            return
        if not data:
            self.drop(connection, "connection closed by the client (mid-request)")
            return
        if connection.started is None:
            connection.started = time.monotonic()
        connection.buffer += data
        self.check(connection)

    def check(self, connection: Connection) -> None:
        complete = request_complete(connection.buffer, self.max_body)
        if complete is False:
            return
        self.release(connection)
        if complete is True:
            with self.lock:
                self.busy += 1
            self.pool.submit(self.answered, connection)
        else:
            self.pool.submit(self.refuse, connection, complete)

    def answered(self, connection: Connection) -> None:
        try:
            again = self.answer(connection)
        finally:
            with self.lock:
                self.busy -= 1
        if again:
            self.add(connection)
        else:
            close(connection.sock)

    def expire(self, now: float) -> None:
        for connection in [c for c in self.waiting.values() if c.deadline(self.timeout) <= now]:
            self.drop(connection, "connection closed: the client went quiet mid-request" if connection.buffer else None)

    def release(self, connection: Connection) -> None:
        """Take `connection` out of the room, still open."""
        self.selector.unregister(connection.sock)
        del self.waiting[connection.sock]

    def drop(self, connection: Connection, why: str | None = None) -> None:
        """Close `connection`; a request cut short (`why`) gets a line in the log, an idle connection none."""
        if connection.sock in self.waiting:
            self.release(connection)
        close(connection.sock)
        if why is not None and connection.buffer:
            self.log(f"{connection.address[0]} {why}")


def close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class RequestReader:
    """A handler's `rfile`: the bytes the waiting room read, then the socket's, until the request's deadline.

    What the request leaves unread stays in `connection.buffer`: the start of the next one."""

    def __init__(self, connection: Connection, deadline: float, timeout: float):
        self.connection, self.deadline, self.buffer = connection, deadline, connection.buffer
        self.timeout = timeout  # for the answer's writes, put back after each read
        self.ended = False  # the client closed its side, or the deadline passed

    def more(self) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.ended = True
            raise TimeoutError("the request's deadline passed")
        self.connection.sock.settimeout(left)
        try:
            data = self.connection.sock.recv(1 << 16)
        finally:
            self.connection.sock.settimeout(self.timeout)
        self.buffer += data
        self.ended = not data
        return bool(data)

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0 and (limit < 0 or end < limit):
                return self.take(end + 1)
            if 0 <= limit <= len(self.buffer) or not self.more():
                return self.take(len(self.buffer) if limit < 0 else limit)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise ValueError("a request is read by its Content-Length")
        while len(self.buffer) < size and self.more():
            pass
        return self.take(size)

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def close(self) -> None:
        pass


class SocketWriter:
    """A handler's `wfile`: every write goes whole to the socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
