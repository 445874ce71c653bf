"""The `bench` command: a thin shell over the library. Each subcommand lives in bench/commands/<name>.py.

A command module defines ``register(subparsers) -> None`` (adds its parser, sets ``func``) and keeps heavy
imports inside the function it runs, so `bench --help` stays fast. ``func(args) -> int`` returns the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Iterator, Sequence

from bench import __version__
from bench.errors import EXIT_INPUT, EXIT_INTERRUPTED, BenchError

__all__ = ["main"]

COMMANDS = ("run", "serve", "data", "report", "compare", "merge", "calibrate", "capacity", "recover",
            "locust_worker")


class _Parser(argparse.ArgumentParser):
    """A usage mistake (`-c abc`, an unknown flag) is one line on stderr and exit 2, like every other bad input;
    argparse's default printed the whole usage block (15 lines for `bench run`) before it."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().__init__(*args, **kwargs)
        # `-d -1s` is a negative duration, not an unknown option `-1s` ("expected one argument"): a value that
        # starts with a minus and a digit is a value, so its own check can say what is wrong with it (no option
        # of bench's looks like that). Subparsers are made of this class too.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Load generator and benchmark harness for ML inference endpoints "
                     "(Wallaroo pipelines, UbiOps deployments, KServe V2 / Open Inference Protocol).")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bench.commands.{name}").register(sub)
    return parser


# commands that keep their own signal handling from the start (an emulator's loop, a Locust worker's gevent loop)
_OWN_SIGNALS = ("serve", "locust_worker", "locust-worker")


@contextlib.contextmanager
def stops_are_ctrl_c(argv: Sequence[str], *, restore: bool) -> Iterator[None]:
    """For the block, SIGTERM is Ctrl-C from the first moment (start-up included, and after a run's event loop
    removed its own handler, e.g. while the summary is printed): the command always ends with 130 and a line,
    never silently by the signal. SIGHUP (terminal closed, ssh dropped) is a SIGTERM: the same graceful stop and
    partial report; the terminal it hung up is then replaced by /dev/null, so printing the summary cannot fail.
    SIGHUP ignored (``nohup``) stays ignored. ``restore``: the handlers before are restored after (an in-process
    caller; the `bench` process keeps them until it exits)."""
    if any(a in _OWN_SIGNALS for a in argv[:1]) or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _STOPS}
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if hasattr(signal, "SIGHUP") and previous.get(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _hangup)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if restore and handler is not None:
                signal.signal(sig, handler)


_STOPS = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)


def _hangup(_sig: int, _frame: object) -> None:
    """SIGHUP: off a hung-up terminal, then the SIGTERM stop (whatever handles SIGTERM at this moment)."""
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    with stops_are_ctrl_c(sys.argv[1:] if argv is None else list(argv), restore=argv is not None):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    try:
        code: int = args.func(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # its message, when given, says what was written (bench.session)
        print(f"bench: {exc.args[0]}" if exc.args else "bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
