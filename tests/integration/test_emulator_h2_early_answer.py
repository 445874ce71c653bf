"""The h2c emulator keeps a connection open when it answers a request before reading its body (a refusal: 401,
429), as a real platform behind nginx does. hypercorn alone dropped the whole connection on the late DATA frame,
and bench's h2 engine counted the other requests on it as resets."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

import h2.config
import h2.connection
import h2.events

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import EmbeddedEmulator

PATH = "/v2.1/projects/demo/deployments/ccfraud/requests"
TOKEN = EmulatorConfig().ubiops_token


class Client:
    """A prior-knowledge h2c client on a blocking socket: just enough to send frames one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=0.2)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()
        self.closed = False

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def wait(self, until: Callable[[], bool], deadline_s: float = 10.0) -> None:
        """Read until ``until()`` holds, the server closes, or the deadline passes."""
        end = time.monotonic() + deadline_s
        while not until() and not self.closed and time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.closed = True
            self.flush()

    def close(self) -> None:
        self.sock.close()


def test_an_answer_before_the_body_leaves_the_connection_open() -> None:
    with EmbeddedEmulator(EmulatorConfig(http2=True)) as emu:
        url = urlparse(emu.base_url)
        assert url.hostname == "127.0.0.1" and url.port
        client = Client(url.hostname, url.port)
        try:
            head = [(":method", "POST"), (":path", PATH), (":scheme", "http"), (":authority", url.netloc),
                    ("content-type", "application/json")]
            # stream 1 has no token: the emulator refuses it (401) from its headers alone; its body follows only
            # after the answer's headers are in, as a body sent in a later read would
            client.conn.send_headers(1, head)
            client.flush()
            client.wait(lambda: 1 in client.status)
            assert client.status.get(1) == 401
            # an emulator that ends the answer before the body is in ends it now (the old one did, then dropped
            # the connection on the DATA below); this one holds the end until the body is read
            client.wait(lambda: 1 in client.ended, deadline_s=1.0)
            client.conn.send_data(1, b'{"tensor": [[1.0]]}', end_stream=True)
            client.conn.send_headers(3, [*head, ("authorization", TOKEN)])
            client.conn.send_data(3, b'{"tensor": [1.0]}', end_stream=True)
            client.flush()
            client.wait(lambda: client.ended >= {1, 3})
            assert not client.closed, "the emulator closed the connection after an early answer"
            assert client.ended >= {1, 3} and client.status == {1: 401, 3: 200}
        finally:
            client.close()
