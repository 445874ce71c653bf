"""Secrets that arrive by other doors than token_env: custom headers, every URL key of a scenario, error samples cut
inside a secret, the bare and Basic forms of a credential, Azure-style ``?code=`` keys (audit S1-S5)."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.cli import build_parser
from bench.errors import InputError
from bench.facts import scenario_toml
from bench.run_command import scenario_from_args
from bench.scenario import load_scenario
from bench.secrets import MASK, Scrubber, scrubber_for, url_secrets
from bench.targets.kserve_codec import config_from_mapping as kserve_config

SECRET = "zSEKRET-c1iheader-77665544"
BASE = """
name = "t"
[target]
kind = "http"
url = "http://127.0.0.1:9/infer"
{target}
[data]
body = "body.json"
[load]
concurrency = 1
duration = "1s"
{more}
"""


def _scenario(tmp_path: Path, target: str = "", more: str = "") -> Path:
    (tmp_path / "body.json").write_text("{}")
    p = tmp_path / "s.toml"
    p.write_text(BASE.format(target=target, more=more))
    return p


def _error(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        load_scenario(path)
    return info.value


def _scrubber(sc: Any) -> Scrubber:
    return scrubber_for(SimpleNamespace(scenario=sc, target_config=None), environ={})  # type: ignore[arg-type]


# -- S1: literal headers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value"), [
    ("X-Custom-Auth", f"Bearer {SECRET}"),  # an auth scheme in the value, whatever the name
    ("X-Forwarded-Thing", f"Basic {base64.b64encode(b'u:' + SECRET.encode()).decode()}"),
    ("X-Upstream", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig-" + SECRET),  # a bare JWT
    ("Ocp-Apim-Subscription-Key", SECRET),  # a secret-looking name, whatever the value
    ("X-Goog-Api-Key", SECRET),
    ("X-Amz-Security-Token", SECRET),
    ("X-Upstream-Auth", SECRET),
])
def test_a_scenario_refuses_a_literal_header_that_looks_like_a_credential(tmp_path: Path, name: str,
                                                                          value: str) -> None:
    err = _error(_scenario(tmp_path, f'headers = {{ "{name}" = "{value}" }}'))
    assert err.key == f"target.headers.{name}" and "headers_env" in err.problem
    assert SECRET not in str(err) and "\n" not in str(err)
    # ordinary headers (and words that only follow a scheme's name) are kept
    sc = load_scenario(_scenario(tmp_path, 'headers = { "Content-Type" = "application/json", "X-Request-Id" = "r1", '
                                           '"Idempotency-Key" = "k-1", "X-Plan" = "basic tier" }'))
    assert sc.target.headers["X-Plan"] == "basic tier"


def test_kserve_headers_follow_the_same_rule() -> None:
    with pytest.raises(InputError) as info:
        kserve_config({"kind": "kserve", "url": "http://127.0.0.1:1", "model_name": "m",
                       "headers": {"X-Upstream-Auth": f"Bearer {SECRET}"}}, "k.toml")
    assert "headers_env" in info.value.problem and SECRET not in str(info.value)


def test_a_command_line_header_is_allowed_and_scrubbed_in_every_form(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "body.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["run", "--url", "http://127.0.0.1:9/x", "--body", "body.json",
                                      "-H", f"X-Upstream-Auth: Bearer {SECRET}", "-H", f"X-Goog-Api-Key: k{SECRET}"])
    sc = scenario_from_args(args)
    assert sc.target.headers["X-Upstream-Auth"] == f"Bearer {SECRET}"  # sent as given, as curl and hey do
    scrub = _scrubber(sc)
    b64 = base64.b64encode(SECRET.encode()).decode()
    echoed = f"got Bearer {SECRET} / {SECRET} / {b64} / k{SECRET}"
    assert SECRET not in scrub.text(echoed) and b64 not in scrub.text(echoed)
    assert SECRET not in scrub.text(scenario_toml(sc.source))  # the report's scenario copy


# -- S2: every URL key --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "more"), [
    ("server_metrics.url", '[server_metrics]\nurl = "http://prom:{s}@127.0.0.1:9/metrics"'),
    ("auth.token_url", '[auth]\nkind = "client_credentials"\nclient_secret_env = "CS"\n'
                       'token_url = "http://u:{s}@127.0.0.1:9/token"'),
    ("wallaroo.api_url", '[wallaroo]\napi_url = "http://u:{s}@127.0.0.1:9"'),
])
def test_userinfo_is_refused_in_every_url_key(tmp_path: Path, key: str, more: str) -> None:
    err = _error(_scenario(tmp_path, more=more.format(s=SECRET)))
    assert err.key == key and "user:password" in err.problem and SECRET not in str(err)


def test_the_secrets_of_every_url_key_are_scrubbed(tmp_path: Path) -> None:
    sc = load_scenario(_scenario(tmp_path, more=f'[server_metrics]\nurl = "http://127.0.0.1:9/metrics?access_token='
                                                f'{SECRET}"\n[wallaroo]\napi_url = "http://127.0.0.1:9/?code=c{SECRET}"'))
    scrub = _scrubber(sc)
    assert scrub.text(f"{SECRET} c{SECRET}") == f"{MASK} {MASK}"
    assert SECRET not in scrub.text(scenario_toml(sc.source))


# -- S3: error samples cut inside a secret ------------------------------------------------------------------------

@given(cut=st.integers(min_value=4, max_value=39), pad=st.text(alphabet="xyz {}:\"", max_size=40))
def test_a_sample_cut_inside_a_secret_keeps_no_fragment_of_it(cut: int, pad: str) -> None:
    secret = "wtok-SEKRET-a1b2c3d4e5f6g7h8i9j0-xyz-40"
    scrub = Scrubber([f"Bearer {secret}"])
    for form in (secret, base64.b64encode(secret.encode()).decode()):
        out = scrub.sample(f"{pad}you sent {form[:cut]}")
        assert out == f"{pad}you sent {MASK}"


def test_a_long_token_echoed_bare_never_leaves_its_head() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9." + "A" * 900 + "b" * 600 + ".sig"
    scrub = Scrubber([jwt])
    sample = f'{{"error": "unknown token {jwt}"}}'.encode()[:512].decode()
    assert scrub.sample(sample) == f'{{"error": "unknown token {MASK}'
    assert scrub.sample("ends with eyJ") == "ends with eyJ"  # shorter than 4 characters: ordinary text
    assert Scrubber().sample("nothing known") == "nothing known"


# -- S4: bare and Basic forms -------------------------------------------------------------------------------------

def test_the_bare_credential_is_scrubbed_base64_encoded_and_basic_decoded() -> None:
    bare = "ubi-SEKRET-0123456789abcdef0123"
    assert Scrubber([f"Token {bare}"]).text(base64.b64encode(bare.encode()).decode()) == MASK
    basic = Scrubber(["Basic " + base64.b64encode(b"loadtester:pw-SEKRET-42").decode()])
    assert basic.text("loadtester:pw-SEKRET-42 / pw-SEKRET-42 / loadtester") == f"{MASK} / {MASK} / loadtester"


# -- S5: query keys -----------------------------------------------------------------------------------------------

def test_azure_code_and_sas_signatures_are_secret_query_parameters() -> None:
    url = "https://fn.example.net/api/infer?code=qSEKRETcode7890&sv=2022-11-02&se=2030-01-01&sig=s1gnature&zipcode=9"
    assert sorted(url_secrets(url)) == ["qSEKRETcode7890", "s1gnature"]
