"""Moved to run_plan.sizes (the shared lowest layer); this alias keeps old imports working."""

import sys

import run_plan.sizes as _moved

sys.modules[__name__] = _moved
