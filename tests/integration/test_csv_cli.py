"""A CSV data file with a bad cell through the real `bench run`: one line naming the file, the column and the
spreadsheet row, exit 2, before any load (it was packed without the column: every request a 400, exit 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 29  # the embedded emulator's ccfraud model takes 29 features

SCENARIO = """name = "csv"
[target]
url = "embedded"
[data]
path = "d.csv"
[load]
concurrency = 2
requests = 30
duration = "2s"
"""


def write_csv(path: Path, bad: tuple[int, int, str] | None) -> None:
    rows = [[f"{(r * FEATURES + c) % 17 / 10 - 0.8:.2f}" for c in range(FEATURES)] for r in range(20)]
    if bad is not None:
        rows[bad[0]][bad[1]] = bad[2]
    path.write_text(",".join(f"f{c}" for c in range(FEATURES)) + "\n" + "".join(",".join(r) + "\n" for r in rows))


def bench(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "s.toml").write_text(SCENARIO)
    return subprocess.run([sys.executable, "-m", "bench", "run", "s.toml", "--json", "--quiet", "--out", "r.arrow"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_good_csv_of_features_runs(tmp_path: Path) -> None:
    write_csv(tmp_path / "d.csv", None)
    proc = bench(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accounting"]["ok"] == 30


@pytest.mark.parametrize(("bad", "words"), [
    ((6, 5, "x"), ("column 'f5'", "row 8", "'x' is not a number")),
    ((0, 28, ""), ("column 'f28'", "row 2", "empty cell")),
])
def test_a_bad_cell_is_one_line_naming_file_column_and_row(tmp_path: Path, bad: tuple[int, int, str],
                                                           words: tuple[str, ...]) -> None:
    write_csv(tmp_path / "d.csv", bad)
    proc = bench(tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], err[-1000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(tmp_path / "d.csv") in err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "r.arrow").exists()  # refused before any load
