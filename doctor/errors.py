"""Moved to run_plan.errors (the shared lowest layer); this alias keeps old imports working."""

import sys

import run_plan.errors as _moved

sys.modules[__name__] = _moved
