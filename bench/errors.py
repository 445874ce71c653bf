"""Errors that the CLI turns into one clear line and an exit code (no traceback)."""

from __future__ import annotations

__all__ = ["EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_INVALID", "EXIT_OK", "EXIT_SLO", "BenchError", "InputError",
           "RunInvalid", "one_line"]

EXIT_OK = 0
EXIT_SLO = 1  # SLO or regression check failed
EXIT_INPUT = 2  # usage or input error
EXIT_INVALID = 3  # run invalid: generator-bound, target unreachable, deployment not running
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """Base class: carries the exit code the CLI should use."""

    exit_code = EXIT_INPUT


class InputError(BenchError):
    """Bad scenario, data file or argument: names the file, the key and the problem."""

    exit_code = EXIT_INPUT

    def __init__(self, problem: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(one_line(f"{where}: {problem}" if where else problem))


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (a key or value from a bad file may hold
    them), so an error stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RunInvalid(BenchError):
    """The run could not produce trustworthy numbers (target unreachable, not running, generator-bound)."""

    exit_code = EXIT_INVALID
