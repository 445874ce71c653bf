"""Run one coroutine of the run core on a fresh event loop (uvloop when the scenario allows), surfacing a
BenchError or Ctrl-C from inside task groups as itself, with any secret the run held scrubbed from its message.

Shared by the session layer and multi-process workers (which must not import the session: it owns the emulator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from bench.errors import BenchError, InputError
from bench.facts import RunFacts
from bench.rundata import RunData
from bench.runner import Prepared, RunControl, StartGate
from bench.scenario import Scenario

__all__ = ["run_async", "run_once", "run_unwrapped", "use_uvloop"]

T = TypeVar("T")


def run_unwrapped(fn: Callable[[], T]) -> T:
    """Task groups wrap errors in exception groups; surface a BenchError (or Ctrl-C) as itself."""
    try:
        return fn()
    except BaseExceptionGroup as group:
        inner = _first(group, (BenchError, KeyboardInterrupt))
        if inner is not None:
            raise inner from None
        raise


def _first(group: BaseExceptionGroup[BaseException], kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, kinds):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kinds)
            if found is not None:
                return found
    return None


def use_uvloop(sc: Scenario) -> bool:
    if sc.engine.loop == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if sc.engine.loop == "uvloop":
            raise InputError("uvloop is not installed", key="engine.loop") from None
        return False
    return True


def run_async(prepared: Prepared, ctl: RunControl, fn: Callable[[], Any]) -> Any:
    """``fn()`` (a coroutine factory) on a fresh event loop; BenchErrors come out unwrapped and scrubbed of secrets."""
    import anyio

    try:
        return run_unwrapped(lambda: anyio.run(fn, backend="asyncio",
                                               backend_options={"use_uvloop": use_uvloop(prepared.scenario)}))
    except BenchError as exc:
        scrubber = prepared.scrubber
        scrubber.add(ctl.secrets())  # tokens issued during the run, beside the values known at prepare time
        if scrubber:  # messages about token endpoints must not carry what was sent to them
            exc.args = (scrubber.text(str(exc)),)
        raise


def run_once(prepared: Prepared, ctl: RunControl, *, start_at_wall: float | StartGate | None = None,
             worker: tuple[int, int] = (0, 1)) -> tuple[Any, RunFacts]:
    """Apply the load once (``prepared`` must be resolved): the recorder's RunData and the run's facts."""
    from bench.runner import execute

    result: tuple[RunData, RunFacts] = run_async(
        prepared, ctl, lambda: execute(prepared, ctl, start_at_wall=start_at_wall, worker=worker))
    return result


