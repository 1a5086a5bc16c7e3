"""The one error boundary shared by `doctor` and `niah`: known errors → one line + hint + exit code.

No traceback unless --debug (or NIAH_DOCTOR_DEBUG=1). Messages are redacted like reports.

The environment is input too: a terminal whose encoding cannot show `✓` (PYTHONIOENCODING=latin-1)
gets `?` instead of a UnicodeEncodeError, and stdout on a full disk or /dev/full, or a read-only
output, is a one-line error with exit 1 (the environment), never an internal error.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import click

from doctor.report.redact import Redactor
from run_plan.errors import ExitCode, NiahDoctorError
from run_plan.text import inert


def debug_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--debug` for a command: the boundary reads it from argv, so the command itself needs no parameter.
    Every command takes it, because every error hint may say "rerun with --debug"."""
    return click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, help="Show tracebacks on errors."
    )


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("NIAH_DOCTOR_DEBUG") == "1"


# OS errors that mean "the machine said no" (disk full, read-only, no permission, device gone).
_ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENXIO,
        errno.EFBIG,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)


def _say(message: str) -> None:
    try:
        click.echo(inert(Redactor().scrub(message)), err=True)
    except (OSError, ValueError):  # stderr itself is gone or closed: nothing left to tell
        pass


def _tolerant_streams() -> None:
    """Characters the output encoding cannot show become `?` instead of raising mid-report."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError, TypeError):
                pass


def _flush_stdout() -> None:
    """Flush now, inside the boundary, so a write error is ours to report and not a shutdown warning."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _detach_stdout()
        raise


def _detach_stdout() -> None:
    # Point fd 1 at /dev/null so the interpreter's own final flush has nowhere to fail.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _environment_error(exc: OSError) -> str:
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"error: {exc.strerror or exc}{where}"


def run_cli(command: click.Command, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Invoke a click command, mapping every outcome to a documented exit code. Never raises."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    _tolerant_streams()
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        _flush_stdout()
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.Abort:
        _say("Aborted.")
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:  # bad flags: click's own usage message
        exc.show()
        return ExitCode.USAGE
    except NiahDoctorError as exc:
        _say(f"error: {exc.message}")
        if exc.hint:
            _say(f"hint: {exc.hint}")
        if debug:
            _say(traceback.format_exc())
        return int(exc.exit_code)
    except KeyboardInterrupt:
        _say("Interrupted.")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `doctor | head`: not our failure
        _detach_stdout()
        return ExitCode.OK
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            return _internal(exc, debug)
        try:  # if stdout was what failed, drop what is still buffered for it
            sys.stdout.flush()
        except (OSError, ValueError):
            _detach_stdout()
        _say(_environment_error(exc))
        _say("hint: free some space or fix the permissions, then rerun.")
        return ExitCode.FAILURES
    except Exception as exc:
        return _internal(exc, debug)
    return int(result or 0)


def _internal(exc: BaseException, debug: bool) -> int:
    _say(f"internal error: {type(exc).__name__}: {str(exc)[:500]}")
    if debug:
        _say(traceback.format_exc())
    else:
        _say("hint: this is a bug in niah-doctor; rerun with --debug and include the traceback in a report.")
    return ExitCode.INTERNAL


def exit_with(command: click.Command, prog_name: str) -> Callable[[], None]:
    def main() -> None:
        sys.exit(run_cli(command, prog_name=prog_name))

    return main
