"""The reading examples in docs/report-format.md run, without importing bench, against a real report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_report_helpers import S, make_report, make_run

from bench.recorder import Recorder
from bench.report.model import RunData
from bench.report.writer import write_report
from bench.results import Kind

DOC = Path(__file__).resolve().parents[2] / "docs" / "report-format.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples() -> None:
    text = "\n".join(SNIPPETS)
    assert len(SNIPPETS) >= 2 and "pyarrow" in text and ("duckdb" in text or "polars" in text)


def _all_5xx_run() -> RunData:
    """A run in which no request succeeded (as `bench serve --fault 5xx:1.0` gives): no ok histogram rows."""
    rec = Recorder(0, S)
    for i in range(200):
        t = i * S // 100
        rec.record(t, t + 20_000, t + 500_000, Kind.HTTP_ERROR, 503, 10, 5581, 40, 0)
    return rec.finish(2 * S, partial=False)


@pytest.mark.parametrize("run", ["mixed", "all_5xx"])
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs_without_bench(snippet: str, run: str, tmp_path: Path) -> None:
    data = make_run() if run == "mixed" else _all_5xx_run()
    path = write_report(tmp_path / "r.arrow", make_report(data))
    guard = ("import sys\nclass _NoBench:\n    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'bench' or name.startswith('bench.'):\n"
             "            raise ImportError('example must not import bench')\n"
             "sys.meta_path.insert(0, _NoBench())\n")
    script = tmp_path / "example.py"
    script.write_text(guard + snippet)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
