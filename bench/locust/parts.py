"""A Locust master's copy of its workers' checkpoints, beside its report: ``kill -9`` of the master is recoverable.

The master holds the workers' measurements in memory until the run ends; killed, it would leave nothing. So,
as a ``--processes`` parent does (bench.checkpoint), it writes a manifest at ``.NAME.arrow.checkpoint`` before
the load starts, and each worker's engine checkpoints its share once a second (the same JSON lines a
``--processes`` worker writes, tagged with the run id) and sends the new lines to the master, which appends them
to ``.NAME.arrow.wI.checkpoint``. The workers may be on other hosts: the master's disk is the one place where
their shares meet. ``bench recover NAME.arrow`` (or the next run with the same ``--out``) merges the parts into
one report marked partial; each part's requests on the wire at its last line count as in flight at the end.

Lines arrive already scrubbed of the worker's secrets; the master scrubs them again of its own (e.g. the embedded
emulator's token it handed out) before they touch its disk. Never imports locust.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["WorkerParts"]


class WorkerParts:
    """The part files of one run (``paths[i]``: worker i's), appended as lines arrive, flushed per batch."""

    def __init__(self, run_id: str, paths: Sequence[Path], scrub: Callable[[Any], Any]) -> None:
        self.run_id = run_id
        self.paths = list(paths)
        self._scrub = scrub
        self._files: dict[int, IO[bytes]] = {}

    def append(self, index: int, lines: Sequence[str]) -> None:
        """Worker ``index``'s next checkpoint lines (its header first); the page cache outlives a ``kill -9``."""
        if not 0 <= index < len(self.paths) or not lines:
            return
        f = self._files.get(index)
        if f is None:
            f = self._files[index] = open(self.paths[index], "wb")  # noqa: SIM115 - closed in close()
        out = []
        for line in lines:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:  # never from bench's own child; not worth a crashed master
                continue
            out.append(orjson.dumps(self._scrub(obj)) + b"\n")
        f.write(b"".join(out))
        f.flush()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
