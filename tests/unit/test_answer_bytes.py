"""How much of an answer each target keeps for its classifier (RequestSet.answer_bytes)."""

from __future__ import annotations

from pathlib import Path

from bench.results import ERROR_DETAIL_BYTES, PreparedBody
from bench.runner import request_set
from bench.scenario import load_scenario


def _scenario(tmp_path: Path, target: str, data: str) -> Path:
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    path = tmp_path / "s.toml"
    data = data.format(body=body)
    path.write_text(f'[target]\n{target}\n[data]\n{data}\n[load]\nconcurrency = 1\nduration = "1s"\n')
    return path


def test_http_target_keeps_only_an_errors_evidence(tmp_path: Path) -> None:
    """Judged by status alone: a big answer is counted, not kept (no join, no memory), beyond an error's detail."""
    sc = load_scenario(_scenario(tmp_path, 'kind = "http"\nurl = "http://127.0.0.1:9/x"', 'body = "{body}"'))
    requests, classify = request_set(sc, sc.target.url, [PreparedBody(b"{}", 1)], None)
    assert requests.answer_bytes == ERROR_DETAIL_BYTES
    assert classify(200, b"", 1)[0] == 0


def test_wallaroo_target_reads_whole_answers(tmp_path: Path) -> None:
    """Rows out are counted from the answer: the classifier needs all of it (up to the engine's cap)."""
    sc = load_scenario(_scenario(tmp_path, 'kind = "wallaroo"\nurl = "http://127.0.0.1:9/infer"', "generate = 3"))
    requests, _ = request_set(sc, sc.target.url, [PreparedBody(b"{}", 1)], None)
    assert requests.answer_bytes is None
