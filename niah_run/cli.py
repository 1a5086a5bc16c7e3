"""`niah`: run and report needle-in-a-haystack sweeps (placeholder until the runner lands)."""

from __future__ import annotations

import click

from doctor import __version__
from doctor.boundary import exit_with


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="niah")
def niah_command() -> None:
    """Needle-in-a-haystack sweeps on local models, exact to the token."""


main = exit_with(niah_command, "niah")
