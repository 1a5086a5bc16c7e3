"""Every `$` line pastes into a shell as it is: the grammar check every printed command passes.

The suite runs with NIAH_DOCTOR_STRICT_COMMANDS=1 (tests/conftest.py), so every fix and every `see: $`
command any test makes is checked where it is made; this file pins what the check catches."""

from __future__ import annotations

import pytest

from doctor.report.model import Fix
from run_plan.shell import shell_line_problem

GOOD = [
    "nvidia-smi",
    "docker run --rm --gpus all ubuntu nvidia-smi  # the NVIDIA Container Toolkit passes the GPU in",
    "PYTHONNOUSERSITE=1 python -m bitsandbytes",
    "python -c 'import torch; print(torch.__version__)'",
    "jq '.a = true' ./m/config.json > ./m/config.json.fixed && mv ./m/config.json.fixed ./m/config.json",
    "ls $(python -c 'import os, bitsandbytes; print(os.path.dirname(bitsandbytes.__file__))')/libbitsandbytes_*",
    "pip install 'transformers>=4.51.0,<5.4.0'",
    "nvidia-smi --query-gpu=driver_version --format=csv,noheader; nvidia-smi | head -4",
    "export CUDA_VISIBLE_DEVICES=1",
]
BAD = [
    '--max-memory "0=74GiB,cpu=200GiB"',  # a flag, not a program
    'from_pretrained(..., max_memory={0: "74GiB"})',  # Python
    "--attn sdpa",
    "sudo nvidia-smi --gpu-reset -i <index>",  # a placeholder
    "export CUDA_VISIBLE_DEVICES=<index of a free GPU>",
    "git init && git add <script> && git commit -m 'x'",
    "meta-device skeleton + transformers' bnb quantizer",  # prose
    "doctor --model m …",
    "ls $(--help)",
]


@pytest.mark.parametrize("line", GOOD)
def test_real_commands_pass(line: str) -> None:
    assert shell_line_problem(line) is None


@pytest.mark.parametrize("line", BAD)
def test_lines_that_would_not_run_are_caught(line: str) -> None:
    assert shell_line_problem(line) is not None


def test_strict_mode_refuses_such_a_fix_where_it_is_made() -> None:
    with pytest.raises(ValueError, match="not a program"):
        Fix("Use sdpa", ("--attn sdpa",))
