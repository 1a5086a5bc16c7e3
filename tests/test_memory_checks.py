"""The memory checks through the DoctorContext test seam (facts built in-process, fake GPUs via --gpus)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from doctor.checks import memory as memory_checks
from doctor.context import DoctorContext
from doctor.memory import Settings, embedded_config, settings_for, sizing_args
from doctor.report.model import Status
from run_plan.spec import RunSpec
from tests.conftest import run_module

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow
SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"


def _ctx(target: RunSpec) -> DoctorContext:
    from doctor.memory.skeleton import size_model

    config = embedded_config(target.model)
    settings = settings_for(target, config, None)
    facts = {
        "model": target.model,
        "config_source": "embedded",
        "settings": asdict(settings),
        "sizing": size_model(sizing_args(settings, config, None)),
    }
    return DoctorContext.from_snapshot(target, {"memory": facts})


def test_scout_on_the_fly_fails_and_names_the_fused_experts() -> None:
    ctx = _ctx(RunSpec(model=SCOUT, quant="bnb-4bit", gpus="1xH100-80GB", context=8192))
    fit = memory_checks.memory_fit(ctx)
    assert fit.status is Status.FAIL
    assert "feed_forward.experts" in fit.summary and "any context" in fit.summary
    assert fit.fix is not None and "pre-quantized" in fit.fix.summary
    est = fit.attachments["estimate"]
    for key in (
        "weights_bytes",
        "quantized_params",
        "unquantized_params",
        "unquantized_bytes",
        "unquantized_modules",
        "kv_bytes",
        "activation_peak_bytes",
        "overhead_bytes",
        "total_bytes",
        "per_gpu",
        "fits",
        "max_context_tokens",
        "notes",
        "confidence",
        "method",
        "transformers_version",
        "prefill_chunk",
        "attn",
        "kv_layout",
        "prefill_seconds_estimate",
    ):
        assert key in est, key
    assert set(est["per_gpu"][0]) >= {"index", "name", "capacity_bytes", "needed_bytes"}
    json.dumps(est)  # JSON-able
    quantized = memory_checks.quantized_weights(ctx)
    assert quantized.status is Status.WARN and "bnb-community" in quantized.fix.summary


def test_scout_prequantized_fits_at_8k() -> None:
    ctx = _ctx(RunSpec(model=SCOUT, quant="bnb-4bit", prequantized=True, gpus="1xH100-80GB", context=8192))
    fit = memory_checks.memory_fit(ctx)
    assert fit.status is Status.PASS, fit.summary
    assert fit.attachments["estimate"]["fits"] is True


def test_too_long_context_fails_with_the_longest_that_fits() -> None:
    ctx = _ctx(
        RunSpec(model=SCOUT, quant="bnb-4bit", prequantized=True, gpus="1xH100-80GB", context=4 * 1024 * 1024)
    )
    fit = memory_checks.memory_fit(ctx)
    assert fit.status is Status.FAIL
    longest = fit.attachments["estimate"]["max_context_tokens"]
    assert 0 < longest < 4 * 1024 * 1024 and f"{longest:,}" in fit.summary


def test_no_gpu_known_is_a_warning_not_a_crash() -> None:
    ctx = _ctx(RunSpec(model="HuggingFaceTB/SmolLM2-135M-Instruct", context=4096))
    assert memory_checks.memory_fit(ctx).status is Status.WARN


def test_cli_memory_section_json_offline() -> None:
    proc = run_module(
        "-m",
        "doctor",
        "--model",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--gpus",
        "1x24GB",
        "--context",
        "4k",
        "--only",
        "memory",
        "--format",
        "json",
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["estimate"]["fits"] is True and doc["estimate"]["method"] in (
        "traced",
        "meta-skeleton",
        "analytic",
    )


def test_settings_detect_prequantized_from_quantization_config() -> None:
    config = dict(embedded_config(SCOUT))
    qc = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
    }
    s: Settings = settings_for(RunSpec(model=SCOUT, context=8192), config, qc)
    assert s.prequantized and s.quant == "bnb-4bit" and s.double_quant


def test_choose_prefill_chunk_is_the_largest_that_fits() -> None:
    from doctor.memory import choose_prefill_chunk, compute_estimate
    from doctor.memory.analytic import size_analytic
    from doctor.memory.gpus import parse_gpus

    config = embedded_config(SCOUT)
    settings = settings_for(
        RunSpec(model=SCOUT, context=8192, quant="bnb-4bit", prequantized=True), config, None
    )
    sizing = size_analytic(sizing_args(settings, config, None))
    gpus = parse_gpus("4xH100-80GB")
    chunk = choose_prefill_chunk(sizing, settings, gpus)
    assert chunk == 8192 and compute_estimate(sizing, settings, gpus).prefill_chunk == chunk
