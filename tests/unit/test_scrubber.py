"""bench.secrets: scrubbing by value (every encoding a secret travels in) and the input rules."""

from __future__ import annotations

import base64
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from bench.secrets import (
    MASK,
    Scrubber,
    credential_header_problem,
    env_name_problem,
    header_value_problem,
    url_problem,
    url_secrets,
)

SECRET = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=4, max_size=40)


@given(secret=SECRET, before=st.text(max_size=30), after=st.text(max_size=30))
def test_a_known_value_never_survives_in_any_common_form(secret: str, before: str, after: str) -> None:
    scrub = Scrubber([secret])
    for form in (secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()):
        assert form not in scrub.text(before + form + after).replace(MASK, "\0")


def test_bearer_values_are_scrubbed_bare_too() -> None:
    scrub = Scrubber(["Bearer abcdef123"])
    assert scrub.text('{"got": "abcdef123"}') == '{"got": "***"}'


def test_short_values_and_empty_scrubber_leave_text_alone() -> None:
    assert not Scrubber(["", "abc"])
    assert Scrubber(["abc"]).text("abc abc") == "abc abc"


def test_nested_data_is_scrubbed() -> None:
    scrub = Scrubber(["s3cr3tvalue"])
    assert scrub.data({"url": "http://h/?k=s3cr3tvalue", "l": ["x s3cr3tvalue"], "n": 1}) == \
        {"url": "http://h/?k=***", "l": ["x ***"], "n": 1}


def test_url_secrets_are_userinfo_and_secret_named_parameters() -> None:
    assert sorted(url_secrets("https://u:pw1234@h/p?api_key=k1&model=m&sig=s9&X-Amz-Signature=zz")) == \
        sorted(["u", "pw1234", "k1", "s9", "zz"])
    assert url_problem("http://alice:pass@127.0.0.1/") is not None
    assert url_problem("http://127.0.0.1:8080/x?token=t") is None


def test_credential_headers_name_the_alternative() -> None:
    assert "token_env" in (credential_header_problem("Authorization") or "")
    for name in ("X-Api-Key", "api-key", "Cookie", "Proxy-Authorization"):
        assert "headers_env" in (credential_header_problem(name) or "")
    assert credential_header_problem("Content-Type") is None


def test_a_value_given_as_an_env_name_is_not_echoed() -> None:
    assert env_name_problem("BENCH_TOKEN") is None
    problem = env_name_problem("eyJhbGciOi.payload.sig")
    assert problem is not None and "eyJ" not in problem


@given(values=st.lists(st.text(max_size=20), max_size=5), text=st.text(max_size=60))
def test_any_values_build_a_scrubber(values: list[str], text: str) -> None:
    Scrubber(values).text(text)  # never raises, whatever the environment held


@given(value=st.text(max_size=40))
def test_a_header_value_is_refused_exactly_when_it_is_not_one_line_of_ascii_and_never_repeated(value: str) -> None:
    problem = header_value_problem(value)
    sendable = all(" " <= ch <= "~" or ch == "\t" for ch in value)
    assert (problem is None) == sendable
    if problem is not None and len(value.strip()) >= 4:
        assert value.strip() not in problem
