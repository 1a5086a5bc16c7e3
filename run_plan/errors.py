"""Exit codes and the typed errors that the one error boundary (doctor.cli) turns into them.

Library code raises these and never calls sys.exit or prints; the CLI maps them to one clear
message plus a hint on stderr and the documented exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # no failures (warnings allowed unless --strict)
    FAILURES = 1  # at least one check failed (or, for niah, the run failed)
    USAGE = 2  # bad command line, bad config, bad input file
    INTERNAL = 3  # the tool itself broke; a traceback is shown with --debug
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class NiahDoctorError(Exception):
    """Base class: a problem we can explain in one line, with a hint for the fix."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(NiahDoctorError):
    """The user's input is wrong: flags, config file, model id, paths. Exit code 2."""

    exit_code = ExitCode.USAGE


class RunFailed(NiahDoctorError):
    """The requested job ran and failed for a reason outside the tool (exit code 1)."""

    exit_code = ExitCode.FAILURES
