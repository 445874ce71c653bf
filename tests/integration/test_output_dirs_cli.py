"""Explicit output paths get their missing folders, through the real CLI, as `bench report --html` and
`bench data --out` always did: `bench run -o` and `bench merge -o` refused them. A place where the folders
cannot be made is still one line, exit 2, before any load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env=env)


def test_run_and_merge_create_missing_folders(tmp_path: Path) -> None:
    run_out = tmp_path / "new" / "deeper" / "r.arrow"
    proc = bench("run", "--url", "embedded", "-c", "2", "-d", "1s", "--warmup", "0s", "-q", "-o", str(run_out))
    assert proc.returncode == 0, proc.stderr
    assert run_out.is_file()
    merged = tmp_path / "merged" / "all" / "m.arrow"
    proc = bench("merge", str(run_out), "-o", str(merged))
    assert proc.returncode == 0, proc.stderr
    assert merged.is_file() and "-> " + str(merged) in proc.stdout
    for flag, page in (("--html", tmp_path / "views" / "r.html"), ("--markdown", tmp_path / "md" / "x" / "r.md")):
        assert bench("report", str(run_out), flag, str(page)).returncode == 0 and page.is_file()


def test_folders_that_cannot_be_made_are_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "sub" / "r.arrow", Path("/proc/bench-no-such-dir/r.arrow")):
        proc = bench("run", "--url", "embedded", "-c", "2", "-d", "30s", "-q", "-o", str(out))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--out" in lines[0] and "cannot create" in lines[0], proc.stderr
        assert "embedded emulator" not in proc.stderr  # refused before any load
    proc = bench("merge", str(tmp_path / "afile"), "-o", str(tmp_path / "m" / "m.arrow"))
    assert proc.returncode == 2 and not (tmp_path / "m").exists(), proc.stderr  # a bad input leaves no folder
