"""bench.locust's modules, checked in a subprocess (locust monkey-patches gevent into whoever imports it): every
``__all__`` name exists, and the modules of the worker's engine child and of the delta stream import no gevent."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import bench.locust
for name in ("bench.locust", "bench.locust._core", "bench.locust.child", "bench.locust.parts", "bench.locust.wire"):
    importlib.import_module(name)
clean = [m for m in ("locust", "gevent") if m in sys.modules]
names = sorted(m.name for m in pkgutil.walk_packages(bench.locust.__path__, "bench.locust."))
for name in ["bench.locust", *names]:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which does not exist"
print(",".join(clean) or "clean", len(names))
"""


def test_locust_modules_export_what_they_define_and_the_engine_side_stays_gevent_free() -> None:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHECK], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out[0] == "clean"  # the engine child and the wire format never import locust or gevent
    assert int(out[1]) >= 8
