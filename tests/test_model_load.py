"""What the model class does at load, asked of the installed transformers (doctor/probes/model_class.py):
the attention implementations it refuses (transformers' own message) and what its load fetches from the
hub (transformers 5.25 kernelizes by default; niah loads with use_kernels=False unless asked).

Real transformers on tiny configs for the questions; the checks through the probe snapshot seam."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from doctor.context import DoctorContext
from doctor.probes.config_load import (
    ConfigLoadFacts,
    HubKernelFacts,
    HubKernelRepo,
    ModelClassFacts,
    attention_refusals,
)
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.runner import run_check
from run_plan import hub_kernels
from run_plan.spec import RunSpec
from tests.fakes import scenarios as sc

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SDPA_REFUSAL = (
    "ValueError: GptOssForCausalLM does not support an attention implementation through "
    "torch.nn.functional.scaled_dot_product_attention yet. Please request the support"
)
MISSING_ROTARY = (
    "ValueError: Version 2 of 'kernels-community/rotary' is not available in the local cache and Hugging "
    "Face Hub is in offline mode. Download the kernel while online first, or pass an explicit `revision=<commit>`."
)


def _answers(model_type: str, **config: Any) -> dict[str, Any]:
    from doctor.probes.model_class import IMPLEMENTATIONS, attention_answers, model_class

    cfg = transformers.AutoConfig.for_model(model_type, **config)
    cls = model_class(transformers, cfg, "/nonexistent", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return attention_answers(torch, cls, cfg, list(IMPLEMENTATIONS))["answers"]


def test_the_class_is_asked_and_refuses_in_its_own_words() -> None:
    gpt_oss = _answers("gpt_oss", hidden_size=64, num_hidden_layers=1, num_attention_heads=4, head_dim=16)
    assert "does not support an attention implementation through" in gpt_oss["sdpa"]["refused"]
    assert gpt_oss["eager"] == {"settled": "eager"}
    llama = _answers("llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    assert llama["sdpa"] == {"settled": "sdpa"} and llama["eager"] == {"settled": "eager"}
    mamba = _answers("mamba", hidden_size=64, num_hidden_layers=1)
    assert "refused" in mamba["sdpa"] and mamba["eager"] == {"settled": "eager"}


def test_attention_refusals_reads_the_config_of_a_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "gpt-oss"
    transformers.AutoConfig.for_model(
        "gpt_oss", hidden_size=64, num_hidden_layers=1, num_attention_heads=4, head_dim=16
    ).save_pretrained(folder)
    refusals = attention_refusals(RunSpec(model=str(folder), attn="sdpa"))
    assert refusals is not None
    assert refusals["eager"] is None and "scaled_dot_product_attention" in (refusals["sdpa"] or "")
    assert attention_refusals(RunSpec()) is None  # no model: nothing is known to be refused


def test_niahs_own_attention_is_asked_registered_as_the_run_registers_it(tmp_path: Path) -> None:
    # the child asks the class in a fresh interpreter: unregistered, every class "refuses" niah_lean
    folder = tmp_path / "llama"
    _tiny_llama().save_pretrained(folder)
    refusals = attention_refusals(RunSpec(model=str(folder), attn="niah_lean"))
    assert refusals is not None and "niah_lean" in refusals
    assert refusals["niah_lean"] is None


def _tiny_llama() -> Any:
    return transformers.AutoConfig.for_model(
        "llama",
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
    )


def test_niah_load_arguments_keep_the_load_from_kernelizing(monkeypatch: pytest.MonkeyPatch) -> None:
    from doctor.probes.model_class import hub_kernel_answers

    monkeypatch.delenv(hub_kernels.ENV, raising=False)
    has_switch = hasattr(transformers.PreTrainedModel, "set_use_kernels")
    kwargs = hub_kernels.load_kwargs(has_switch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answer = hub_kernel_answers(torch, transformers, _tiny_llama(), kwargs)
    assert not answer.get("kernelize")
    if has_switch:
        assert kwargs == {"use_kernels": False}


def test_asked_for_hub_kernels_the_load_names_what_it_would_fetch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With USE_HUB_KERNELS=1 transformers 5.25 kernelizes; offline with an empty cache, every CUDA kernel
    this Llama needs is missing, in the words `kernels` uses when the load fails."""
    from doctor.probes.model_class import hub_kernel_answers

    if not hasattr(transformers.PreTrainedModel, "set_use_kernels"):
        pytest.skip("this transformers does not kernelize at load")
    monkeypatch.setenv(hub_kernels.ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    kwargs = hub_kernels.load_kwargs(True)
    assert kwargs == {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answer = hub_kernel_answers(torch, transformers, _tiny_llama(), kwargs)
    if answer.get("kernelize") is not True:
        pytest.skip("this transformers does not kernelize by default when asked")
    repos = {r["repo_id"]: r for r in answer["repos"]}
    assert repos, answer
    assert all(r["missing"] for r in repos.values())
    if "kernels-community/rotary" in repos:
        assert "not available in the local cache" in repos["kernels-community/rotary"]["missing"]


def test_hub_kernel_load_kwargs_follow_the_users_switch() -> None:
    assert hub_kernels.load_kwargs(True, {}) == {"use_kernels": False}
    assert hub_kernels.load_kwargs(True, {hub_kernels.ENV: "1"}) == {}
    assert hub_kernels.load_kwargs(True, {hub_kernels.ENV: "0"}) == {"use_kernels": False}
    assert hub_kernels.load_kwargs(False, {}) == {}  # a transformers without the switch gets nothing new
    assert "off" in (hub_kernels.describe({"use_kernels": False}, {}) or "")
    assert hub_kernels.describe({}, {}) is None


# ---------------------------------------------------------------- the checks, through the snapshot seam


def _facts(model: ModelClassFacts) -> ConfigLoadFacts:
    return ConfigLoadFacts(
        model="m",
        resolved_id=None,
        source="local-folder",
        load_from="/models/m",
        stand_in=False,
        transformers_version="5.25.0",
        strict_config_validation=True,
        trust_remote_code=False,
        model_class=model,
    )


def _model(refusals: dict[str, str | None], kernels: HubKernelFacts | None = None) -> ModelClassFacts:
    return ModelClassFacts(
        model_class="GptOssForCausalLM",
        refusals=refusals,
        settled={k: k for k, v in refusals.items() if v is None},
        hub_kernels=kernels,
    )


def _run(check_id: str, facts: ConfigLoadFacts, target: RunSpec, gpus: int = 1) -> Any:
    spec = next(s for s in load_checks() if s.id == check_id)
    nvml = sc.nvml(*(sc.gpu(index=i) for i in range(gpus))) if gpus else sc.no_nvml()
    ctx = DoctorContext.from_snapshot(target, {"config-load": facts, "nvml": nvml})
    result, _ = run_check(spec, ctx)
    return result


def test_a_refused_attention_fails_with_transformers_message_and_what_is_accepted() -> None:
    facts = _facts(_model({"eager": None, "sdpa": SDPA_REFUSAL, "flex_attention": None}))
    result = _run("attn-model-support", facts, RunSpec(model="/models/m", attn="sdpa", context=8192))
    assert result.status is Status.FAIL
    assert "does not support an attention implementation through" in result.summary
    assert result.fix is not None and "eager" in result.fix.summary
    assert any("--attn eager" in c for c in result.fix.commands)
    ok = _run("attn-model-support", facts, RunSpec(model="/models/m", attn="eager"))
    assert ok.status is Status.PASS


def test_auto_is_judged_as_what_it_settles_on() -> None:
    facts = _facts(_model({"eager": None, "sdpa": SDPA_REFUSAL}))
    assert _run("attn-model-support", facts, RunSpec(model="/models/m", attn="auto")).status is Status.FAIL


def _kernels(missing: str | None, kernelize: bool = True) -> HubKernelFacts:
    return HubKernelFacts(
        load_kwargs={},
        kernelize=kernelize,
        layers=("rotary_pos_emb",),
        repos=(HubKernelRepo("kernels-community/rotary", 2, None, ("rotary_pos_emb",), missing),),
    )


def test_a_kernel_the_load_would_fetch_offline_fails_on_the_gpu_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(hub_kernels.ENV, "1")
    facts = _facts(_model({"eager": None}, _kernels(MISSING_ROTARY)))
    target = RunSpec(model="/models/m", context=8192)
    result = _run("hub-kernels-offline", facts, target)
    assert result.status is Status.FAIL
    assert (
        "kernels-community/rotary (v2)" in result.summary
        and "not available in the local cache" in result.summary
    )
    assert result.fix is not None
    assert any(
        "hf download kernels-community/rotary --repo-type kernel --revision v2" in c
        for c in result.fix.commands
    )
    assert any(f"unset {hub_kernels.ENV}" in c for c in result.fix.commands)
    assert (
        _run("hub-kernels-offline", facts, target, gpus=0).status is Status.WARN
    )  # not the machine that runs it
    online = RunSpec(model="/models/m", context=8192, online=True)
    assert _run("hub-kernels-offline", facts, online).status is Status.WARN


def test_without_kernelize_or_with_every_kernel_cached_nothing_is_fetched() -> None:
    off = HubKernelFacts(load_kwargs={"use_kernels": False}, kernelize=False)
    result = _run(
        "hub-kernels-offline", _facts(_model({"eager": None}, off)), RunSpec(model="/m", context=8192)
    )
    assert result.status is Status.PASS and "use_kernels=False" in result.summary
    cached = _facts(_model({"eager": None}, _kernels(None)))
    assert _run("hub-kernels-offline", cached, RunSpec(model="/m", context=8192)).status is Status.PASS


def test_niah_records_the_hub_kernel_setting_in_the_run_identity() -> None:
    from niah_run.identity import _IDENTITY_FIELDS

    assert "hub_kernels" in _IDENTITY_FIELDS
    assert json.dumps(hub_kernels.describe({"use_kernels": False}, {}))
