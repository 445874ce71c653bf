"""Pure parts of the lean HTTP/2 engine: the once-only HPACK encoding, the caching decoder, header lists."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder
from hypothesis import given
from hypothesis import strategies as st

from bench.engine.base import EngineConfig, RequestBuildError
from bench.engine.fast import FastEngine, parse_target
from bench.engine.h2 import (
    H2Engine,
    _CachingDecoder,
    _status,
    encode_header_block,
    h2_header_list,
    table_size_update,
)
from bench.engine.httpx_engine import HttpxEngine
from bench.engine.select import choose_engine

names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).map(str.encode)
values = st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b)
known = st.sampled_from([(b":method", b"POST"), (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                         (b":authority", b"h:1"), (b"content-type", b"application/json"),
                         (b"authorization", b"Bearer s3cret"), (b"content-length", b"5657")])


@given(st.lists(st.one_of(known, st.tuples(names, values)), max_size=12))
def test_block_decodes_to_the_same_headers_and_leaves_the_table_empty(headers: list[tuple[bytes, bytes]]) -> None:
    dec = Decoder()
    block = encode_header_block(headers)
    for _ in range(3):  # resent verbatim: always the same meaning, never any dynamic-table state
        assert [tuple(h) for h in dec.decode(block, raw=True)] == headers
        assert len(dec.header_table.dynamic_entries) == 0


def test_static_exact_matches_are_one_byte_and_credentials_never_indexed() -> None:
    assert encode_header_block([(b":method", b"POST")]) == b"\x83"
    block = encode_header_block([(b"authorization", b"Bearer x")])
    assert block[0] & 0xF0 == 0x10  # literal never indexed (RFC 7541 6.2.3)


def test_long_values_use_multibyte_integers() -> None:
    value = b"v" * 1000
    assert [tuple(h) for h in Decoder().decode(encode_header_block([(b"x-big", value)]), raw=True)] == [
        (b"x-big", value)]


def test_header_list_pseudo_first_lowercase_and_host_as_authority() -> None:
    t = parse_target("http://127.0.0.1:8080/v1/infer?x=1")
    got = h2_header_list("post", t, {"Content-Type": "a/b", "Host": "h.example", "X-Token": "t"}, 12)
    assert got == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h.example"),
                   (b":path", b"/v1/infer?x=1"), (b"content-type", b"a/b"), (b"x-token", b"t"),
                   (b"content-length", b"12")]
    assert h2_header_list("GET", t, {}, 0)[2] == (b":authority", b"127.0.0.1:8080")
    for name in ("Connection", "Transfer-Encoding", "content-length", "TE", "upgrade"):
        with pytest.raises(RequestBuildError, match="cannot be set"):
            h2_header_list("GET", t, {name: "x"}, 0)
    assert h2_header_list("GET", parse_target("https://h/"), {}, 0)[1] == (b":scheme", b"https")
    with pytest.raises(RequestBuildError, match="line break"):
        h2_header_list("GET", t, {"X-A": "a\r\nb"}, 0)


def test_table_size_update_prefix_is_read_by_a_decoder_with_a_smaller_table() -> None:
    block = table_size_update(0) + b"\x83\x86"
    assert block == b"\x20\x83\x86"
    dec = Decoder()
    dec.max_allowed_table_size = 0
    assert [tuple(h) for h in dec.decode(block, raw=True)] == [(b":method", b"POST"), (b":scheme", b"http")]


def test_caching_decoder_reuses_only_blocks_that_leave_the_table_alone() -> None:
    enc = Encoder()
    dec = _CachingDecoder()
    ref = Decoder()
    headers = [(b":status", b"200"), (b"server", b"x"), (b"content-length", b"17")]
    first = enc.encode(headers)  # inserts into the dynamic table: never cached
    second = enc.encode(headers)  # references the table only: cached
    for block in (first, second, second, first, second):
        assert [tuple(h) for h in dec.decode(block, raw=True)] == [tuple(h) for h in ref.decode(block, raw=True)]
    assert bytes(second) in dec._cache and bytes(first) not in dec._cache


def test_caching_decoder_with_a_zero_size_table_caches_indexing_literals() -> None:
    """nginx shrinks its table to 0 and then sends literals 'with indexing', which store nothing."""
    enc = Encoder()
    enc.header_table_size = 0
    headers = [(b":status", b"200"), (b"date", b"Mon")]
    first = enc.encode(headers)  # carries the table-size update: changes the decoder, so not cached
    block = enc.encode(headers)
    dec = _CachingDecoder()
    for b in (first, block, block):
        assert [tuple(h) for h in dec.decode(b, raw=True)] == headers
    assert list(dec._cache) == [bytes(block)]


def test_status() -> None:
    assert _status([(b":status", b"204")]) == 204
    assert _status([(b"x", b"y"), (b":status", b"503")]) == 503
    assert _status([(b"x", b"y")]) == 0


def test_choose_engine_picks_h2_for_http2() -> None:
    assert choose_engine(EngineConfig(http2=True), "http://h/") is H2Engine
    assert choose_engine(EngineConfig(kind="fast", http2=True), "https://h/") is H2Engine
    assert choose_engine(EngineConfig(kind="httpx", http2=True), "http://h/") is HttpxEngine
    assert choose_engine(EngineConfig(), "http://h/") is FastEngine
