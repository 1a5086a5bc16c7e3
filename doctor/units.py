"""Moved to run_plan.units (the shared lowest layer); this alias keeps old imports working."""

import sys

import run_plan.units as _moved

sys.modules[__name__] = _moved
