"""One exception-to-kind mapping for every data plane (lean engines, httpx engine, UbiOps runner)."""

from __future__ import annotations

import ssl

import httpx
import pytest

import bench.engine.fast
import bench.engine.httpx_engine
import bench.targets.ubiops_batch
from bench.failures import exception_kind, httpx_kind
from bench.results import Kind


def test_every_data_plane_uses_the_same_mapping() -> None:
    assert bench.engine.fast.exception_kind is exception_kind
    assert bench.engine.httpx_engine.httpx_kind is httpx_kind
    assert bench.targets.ubiops_batch.httpx_kind is httpx_kind  # the batch plane; direct requests run on the engines


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(("exc", "kind"), [
    # the two cases the UbiOps runner used to count differently from the httpx engine
    (httpx.PoolTimeout("no connection free in time"), Kind.READ_TIMEOUT),
    (httpx.RemoteProtocolError("peer closed connection without sending complete message body"), Kind.RESET),
    (httpx.WriteTimeout("w"), Kind.READ_TIMEOUT),
    (httpx.ConnectTimeout("c"), Kind.CONNECT_TIMEOUT),
    (httpx.CloseError("c"), Kind.RESET),
    (httpx.ReadTimeout("t"), Kind.READ_TIMEOUT),
    (_chained(httpx.ConnectError("x"), ConnectionRefusedError()), Kind.CONNECT_REFUSED),
    (_chained(httpx.ConnectError("x"), ssl.SSLCertVerificationError("v")), Kind.TLS_ERROR),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), Kind.RESET),
    (httpx.RemoteProtocolError("<StreamReset stream_id:1, error_code:2>"), Kind.PROTOCOL_ERROR),
    (httpx.ReadError("r"), Kind.RESET),
    (httpx.LocalProtocolError("l"), Kind.PROTOCOL_ERROR),
    # HTTP/2 GOAWAY: a graceful shutdown (NO_ERROR) cut the stream short; an error code is the server's error
    (httpx.RemoteProtocolError("<ConnectionTerminated error_code:0, last_stream_id:39, additional_data:None>"),
     Kind.RESET),
    (httpx.RemoteProtocolError("<ConnectionTerminated error_code:ErrorCodes.NO_ERROR, last_stream_id:9, "
                               "additional_data:None>"), Kind.RESET),
    (httpx.RemoteProtocolError("<ConnectionTerminated error_code:2, last_stream_id:39, additional_data:None>"),
     Kind.PROTOCOL_ERROR),
    (httpx.TooManyRedirects("r"), Kind.OTHER),
])
def test_httpx_faults_map_to_one_kind(exc: BaseException, kind: Kind) -> None:
    assert httpx_kind(exc) == kind


def test_os_errors_walk_the_cause_chain() -> None:
    outer = RuntimeError("wrapped")
    outer.__cause__ = ConnectionRefusedError()
    assert exception_kind(outer, connecting=False) == Kind.CONNECT_REFUSED
    assert exception_kind(None, connecting=True) == Kind.CONNECT_REFUSED
    assert exception_kind(None, connecting=False) == Kind.RESET
