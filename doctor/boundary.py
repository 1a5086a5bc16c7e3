"""The one error boundary shared by `doctor` and `niah`: known errors → one line + hint + exit code.

No traceback unless --debug (or NIAH_DOCTOR_DEBUG=1). Messages are redacted like reports.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

import click

from doctor.errors import ExitCode, NiahDoctorError
from doctor.report.redact import Redactor


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("NIAH_DOCTOR_DEBUG") == "1"


def _say(message: str) -> None:
    click.echo(Redactor().scrub(message), err=True)


def run_cli(command: click.Command, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Invoke a click command, mapping every outcome to a documented exit code. Never raises."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
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
        return ExitCode.OK
    except Exception as exc:
        _say(f"internal error: {type(exc).__name__}: {exc}")
        if debug:
            _say(traceback.format_exc())
        else:
            _say("hint: this is a bug in niah-doctor; rerun with --debug and include the traceback in a report.")
        return ExitCode.INTERNAL
    return int(result or 0)


def exit_with(command: click.Command, prog_name: str) -> Callable[[], None]:
    def main() -> None:
        sys.exit(run_cli(command, prog_name=prog_name))

    return main
