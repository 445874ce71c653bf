"""The `bench` command: a thin shell over the library. Each subcommand lives in bench/commands/<name>.py.

A command module defines ``register(subparsers) -> None`` (adds its parser, sets ``func``) and keeps heavy
imports inside the function it runs, so `bench --help` stays fast. ``func(args) -> int`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import typing
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
