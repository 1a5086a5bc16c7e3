"""Importing the CLIs must not import torch or any other heavy library (fresh interpreter)."""

from __future__ import annotations

import json

from tests.conftest import run_module

HEAVY = ("torch", "transformers", "accelerate", "bitsandbytes", "triton", "matplotlib")


def test_cli_import_is_light() -> None:
    code = (
        "import sys, json, doctor.cli, niah_run.cli; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    proc = run_module("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
