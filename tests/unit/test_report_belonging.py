"""Reports that belong together: merge refuses mixed scenarios/modes/targets/HDR settings and one run twice
(exit 2, one line, --force overrides and says why); compare warns on other modes or targets and on partial runs."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest
from rich.console import Console
from test_report_helpers import make_report, make_run

from bench.errors import InputError
from bench.report.compare import compare_reports, differences
from bench.report.markdown import comparison_markdown
from bench.report.merge import merge_problems, merge_reports
from bench.report.reader import read_report
from bench.report.terminal import render_comparison
from bench.report.writer import write_report

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000 * 1_000_000_000


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def _pair(tmp_path: Path, *, mode_b: str = "closed", name_b: str = "quickstart") -> tuple[Path, Path]:
    a = make_report(make_run(1, start_unix_ns=T0))
    b = make_report(make_run(2, start_unix_ns=T0), name=name_b)
    b.meta.load["mode"] = mode_b
    return write_report(tmp_path / "a.arrow", a), write_report(tmp_path / "b.arrow", b)


def test_reports_of_one_run_made_together_merge(tmp_path: Path) -> None:
    pa_, pb = _pair(tmp_path)
    assert merge_problems([read_report(pa_), read_report(pb)]) == []


@pytest.mark.parametrize(("kw", "reason"), [({"mode_b": "open"}, "different load modes"),
                                            ({"name_b": "other"}, "different scenarios")])
def test_merge_refuses_reports_that_do_not_belong_together(tmp_path: Path, kw: dict[str, str],
                                                           reason: str) -> None:
    pa_, pb = _pair(tmp_path, **kw)
    out = tmp_path / "all.arrow"
    proc = bench("merge", str(pa_), str(pb), "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and reason in proc.stderr and "a.arrow" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    forced = bench("merge", "--force", str(pa_), str(pb), "-o", str(out))
    assert forced.returncode == 0, forced.stderr
    assert "--force" in forced.stderr and reason in forced.stderr
    merged = read_report(out)
    assert any(reason in p for p in merged.meta.extra["merge_forced"])
    if reason == "different load modes":
        assert merged.meta.load["mode"] == "closed+open"  # never labelled as the first report's mode


def test_merge_refuses_the_same_run_twice(tmp_path: Path) -> None:
    pa_, _ = _pair(tmp_path)
    copy = tmp_path / "copy.arrow"
    shutil.copy(pa_, copy)
    proc = bench("merge", str(pa_), str(copy), "-o", str(tmp_path / "all.arrow"))
    assert proc.returncode == 2 and "the same run twice" in proc.stderr and proc.stderr.count("\n") == 1
    with pytest.raises(InputError, match="same run twice"):
        merge_reports([read_report(pa_), read_report(pa_)])


def test_same_run_twice_is_caught_without_a_run_id_too(tmp_path: Path) -> None:
    r = read_report(_pair(tmp_path)[0])
    del r.meta.extra["run_id"]
    r2 = read_report(tmp_path / "a.arrow")
    del r2.meta.extra["run_id"]
    assert any("same run twice" in p for p in merge_problems([r, r2]))
    other = read_report(tmp_path / "b.arrow")
    del other.meta.extra["run_id"]
    assert merge_problems([r, other]) == []


def test_merge_refuses_other_hdr_settings(tmp_path: Path) -> None:
    """A report whose histograms use another HDR setting cannot be merged exactly: refused, naming HDR."""
    from hdrh.histogram import HdrHistogram

    pa_, pb = _pair(tmp_path)
    table = pyarrow.ipc.open_file(str(pb)).read_all()
    other = HdrHistogram(1, 60_000_000, 2)
    other.record_value(1000)
    hdr = table.column("hdr").to_pylist()
    sections = table.column("section").to_pylist()
    hdr = [other.encode().decode() if s == "histogram" else h for s, h in zip(sections, hdr, strict=True)]
    table = table.set_column(table.schema.get_field_index("hdr"), "hdr", pa.array(hdr, pa.string()))
    bad = tmp_path / "hdr.arrow"
    with pyarrow.ipc.new_file(str(bad), table.schema) as w:
        w.write_table(table)
    proc = bench("merge", str(pa_), str(bad), "-o", str(tmp_path / "all.arrow"))
    assert proc.returncode == 2 and "HDR" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_compare_warns_on_other_mode_target_and_partial() -> None:
    a = make_report(make_run(1, start_unix_ns=T0))
    b = make_report(make_run(2, start_unix_ns=T0))
    assert compare_reports(a, b).warnings == []
    b.meta.load["mode"] = "open"
    b.meta.target = {"kind": "http", "url": "http://127.0.0.1:9/x"}
    b.run.partial = True
    cmp = compare_reports(a, b)
    text = " | ".join(cmp.warnings)
    assert "load.mode: base closed, new open" in text and "target.url: base (none), new http://127.0.0.1:9/x" in text
    assert "new report is partial" in text
    buf = io.StringIO()
    render_comparison(cmp, Console(file=buf, width=200, color_system=None), "a", "b")
    assert buf.getvalue().count("warning:") == 4  # mode, target kind, target url, partial
    assert comparison_markdown(cmp, "a", "b").count("**warning:**") == 4


def test_differences_name_every_load_and_route_change_and_skip_keys_an_older_report_lacks() -> None:
    a = make_report(make_run(1, start_unix_ns=T0))
    b = make_report(make_run(2, start_unix_ns=T0), name="other")
    a.meta.load.update(rate=100.0, rows_per_request=10, stages=[])
    b.meta.load.update(concurrency=1, rate=200.0, rows_per_request=1000, stages=[[10.0, 5.0]], processes=2)
    b.meta.target = {"host": "model.example.com"}
    got = differences(a, b)
    assert got == ["scenario: base quickstart, new other", "load.concurrency: base 8, new 1",
                   "load.rate: base 100.0, new 200.0", "load.stages: base (none), new [[10.0, 5.0]]",
                   "load.rows_per_request: base 10, new 1000", "target.host: base (none), new model.example.com"]
    assert differences(a, a) == []


def _at(offset_s: float, measured: tuple[float, float] | None = None) -> object:
    from bench.rundata import MEASURED, Phase

    r = make_report(make_run(3, n=200, start_unix_ns=T0 + int(offset_s * 1e9)))
    if measured is not None:
        r.run.phases = [p for p in r.run.phases if p.name != MEASURED] + [Phase(MEASURED, *measured)]
    return r


@pytest.mark.parametrize(("offset_s", "measured_b", "simultaneous"), [
    (0.0, None, True),  # started together
    (1.0, None, True),  # 3 s windows 1 s apart: 2/3 of each overlaps the other
    (2.0, None, False),  # 1/3 overlaps
    (3.0, None, False),  # back to back: 0 %
    (0.0, (1.0, 1.5), True),  # a part that stopped early, wholly inside the other's window
    (5.0, (0.0, 0.5), False),  # a short run after the other
    (10.0, (0.0, 0.0), True),  # no measured window: not judged
])
def test_merge_wants_runs_measured_at_the_same_time(offset_s: float, measured_b: tuple[float, float] | None,
                                                   simultaneous: bool) -> None:
    a, b = _at(0.0), _at(offset_s, measured_b)
    problems = [p for p in merge_problems([a, b]) if "simultaneous" in p]  # type: ignore[list-item]
    assert (problems == []) is simultaneous, problems
    if not simultaneous:
        assert "needs 50% of the shorter" in problems[0]
        with pytest.raises(InputError, match="not simultaneous"):
            merge_reports([a, b])  # type: ignore[list-item]
        forced = merge_reports([a, b], force=True)  # type: ignore[list-item]
        assert any("not simultaneous" in p for p in forced.meta.extra["merge_forced"])
