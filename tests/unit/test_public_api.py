"""Every bench module imports cleanly on its own and exports only names it defines (``__all__``)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import bench

# bench.locust imports locust, which monkey-patches gevent into the importing process: checked in a subprocess
# by tests/unit/test_locust_imports.py, never imported into the test process.
MODULES = sorted(m.name for m in pkgutil.walk_packages(bench.__path__, "bench.")
                 if not m.name.endswith("__main__") and not m.name.startswith("bench.locust"))


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which does not exist"


def test_cli_help_is_fast_and_imports_no_heavy_parts() -> None:
    """`bench --help` must not import pyarrow, numpy, httpx or locust (they load only where used)."""
    code = ("import sys; from bench.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('pyarrow', 'numpy', 'httpx', 'locust', 'gevent') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
