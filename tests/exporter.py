"""``partguard metrics --listen`` as a child process, and scrapes of it the way Prometheus
sends them (raw HTTP, so a test knows when a request has left, before its answer comes)."""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_MAIN = "import sys; from partguard.cli import main; sys.exit(main(sys.argv[1:]))"


def parse(text: str) -> Samples:
    """{(name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@dataclass
class Reply:
    status: int
    body: str
    at: float = 0.0  # time.monotonic() when the answer was complete

    @property
    def samples(self) -> Samples:
        return parse(self.body)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


@dataclass
class Pending:
    """A request already sent; ``reply()`` waits for its answer."""

    conn: http.client.HTTPConnection

    def reply(self) -> Reply:
        resp = self.conn.getresponse()
        body = resp.read().decode()
        self.conn.close()
        return Reply(resp.status, body, time.monotonic())


@dataclass
class Exporter:
    argv: tuple[str, ...]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[str] = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MAIN, "metrics", *self.argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )  # None: ours
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", first)
        assert found, f"the exporter did not start: {first!r}"
        self.port = int(found.group(1))

    def send(self, path: str, timeout: float | None = None) -> Pending:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Accept-Encoding": "identity"}
        if timeout is not None:
            headers["X-Prometheus-Scrape-Timeout-Seconds"] = f"{timeout:g}"
        conn.request("GET", path, headers=headers)
        return Pending(conn)

    def get(self, path: str, timeout: float | None = None) -> Reply:
        return self.send(path, timeout).reply()

    def stop(self) -> str:
        """SIGTERM, as systemd stops it: a clean exit within 15 s (else the test fails and
        ``running`` kills it); returns what it logged."""
        self.proc.terminate()
        err = self.proc.communicate(timeout=15)[1]
        assert self.proc.returncode == 0 and "Traceback" not in err, err
        return err


@contextmanager
def running(*argv: str, env: dict[str, str] | None = None) -> Iterator[Exporter]:
    e = Exporter(argv, env)
    try:
        yield e
    finally:
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.communicate()


def in_parallel(exporter: Exporter, paths: list[str], timeout: float | None = None) -> list[Reply]:
    """Send every request at once, then collect the answers in the same order."""
    replies: list[Reply | None] = [None] * len(paths)

    def one(i: int) -> None:
        replies[i] = exporter.get(paths[i], timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in replies), "a scrape never answered"
    return [r for r in replies if r is not None]


class Proxy:
    """A TCP relay to a server that a test can stall: while stalled, a new connection is
    accepted and then left unanswered (what a hung server or a black-holed route does);
    ``release()`` lets the held ones through. ``accepted`` counts connections."""

    def __init__(self, upstream_port: int, stalled: bool = False) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._open = threading.Event()
        if not stalled:
            self._open.set()
        self._socks: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.set()
        for s in self._socks:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            self._socks.append(client)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self._open.wait()
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._socks.append(server)
        threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
        _pipe(client, server)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
