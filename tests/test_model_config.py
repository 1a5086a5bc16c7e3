"""resolve_model: every source (folder, GGUF folder, HF cache, embedded, hub, demo) and every bad
model (placeholder id, gated, no config.json, truncated JSON, no model_type) — never an exception.
Then the `model` section's checks on those resolutions through the probe snapshot seam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctor.checks.model_source import SCOUT_ID
from doctor.context import DoctorContext
from doctor.model_config import DEMO_MODEL_ID, ModelResolution, resolve_model
from doctor.probes import Unavailable
from doctor.probes.hub import HubFacts, token_source
from doctor.registry import load_checks
from doctor.report.model import Status
from doctor.runner import run_check
from run_plan.spec import RunSpec

PLACEHOLDER = "meta-llama/Llama-4-Scout-10M-hf"  # the id the seed's script carried


def write_model(folder: Path, config: dict | str | None, files: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "config.json").write_text(text)
    for name in files:
        (folder / name).write_bytes(b"\0" * 8)
    return folder


# The three sizes the memory estimate cannot do without (doctor.model_config.REQUIRED_FIELDS).
LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "transformers_version": "4.45.0",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "torch_dtype": "bfloat16",
}


# ---------------------------------------------------------------- local folders


def test_local_folder_with_config(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", LLAMA, ("model.safetensors",))
    res = resolve_model(str(folder))
    assert res.found and res.source == "local-folder"
    assert res.model_type == "llama" and res.architectures == ("LlamaForCausalLM",)
    assert res.config_transformers_version == "4.45.0"
    assert res.weight_files == ("model.safetensors",) and res.pickle_files == ()


def test_folder_without_config_is_invalid(tmp_path: Path) -> None:
    res = resolve_model(str(write_model(tmp_path / "empty", None)))
    assert res.status == "invalid" and "no config.json" in res.message


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"model_type": "llama", "hidden_', "not valid JSON"),  # a killed download
        ("", "empty"),
        ("[1, 2]", "not an object"),
    ],
)
def test_malformed_config_is_invalid(tmp_path: Path, text: str, words: str) -> None:
    res = resolve_model(str(write_model(tmp_path / "m", text)))
    assert res.status == "invalid" and words in res.message
    assert res.config == {}


def test_config_without_model_type_is_invalid(tmp_path: Path) -> None:
    res = resolve_model(str(write_model(tmp_path / "m", {"hidden_size": 8})))
    assert res.status == "invalid" and "model_type" in res.message


def test_gguf_only_folder_is_found(tmp_path: Path) -> None:
    res = resolve_model(str(write_model(tmp_path / "g", None, ("tiny.Q4_0.gguf",))))
    assert res.found and res.gguf_file and res.gguf_file.endswith("tiny.Q4_0.gguf")


def test_weights_quantization_and_remote_code_detected(tmp_path: Path) -> None:
    config = {
        **LLAMA,
        "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True},
        "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"},
    }
    res = resolve_model(str(write_model(tmp_path / "m", config, ("pytorch_model.bin", "training_args.bin"))))
    assert res.pickle_files == ("pytorch_model.bin",)  # training state is not a checkpoint
    assert res.quantization_config == config["quantization_config"]
    assert res.has_remote_code


def test_missing_local_path_is_not_found() -> None:
    res = resolve_model("./no/such/model/folder")
    assert res.status == "not-found" and "no such folder" in res.message


# ---------------------------------------------------------------- demo, embedded, placeholder


def test_demo_is_the_smollm2_gguf_with_embedded_config() -> None:
    res = resolve_model("demo")
    assert res.found and res.source == "demo" and res.resolved_id == DEMO_MODEL_ID
    assert res.gguf_file and res.gguf_file.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert res.model_type == "llama"
    assert not any(k.startswith("_") for k in res.config)  # "_source" moved to embedded_source
    assert res.embedded_source


def test_embedded_scout_keeps_nested_text_config() -> None:
    res = resolve_model(SCOUT_ID.lower())  # the hub matches ids case-insensitively; so do we
    assert res.found and res.source == "embedded" and res.resolved_id == SCOUT_ID
    assert res.model_type == "llama4"
    assert isinstance(res.config.get("text_config"), dict)  # raw, not flattened
    assert res.embedded_source


def test_placeholder_offline_cannot_be_verified() -> None:
    res = resolve_model(PLACEHOLDER)
    assert res.status == "offline-not-cached"
    assert "offline" in res.message and "--online" in res.message


@pytest.mark.parametrize("spec", ["", "   ", "a" * 500, "bad id!!", "\x00", "org/name/extra", "~nobody/x"])
def test_never_raises(spec: str) -> None:
    res = resolve_model(spec)
    assert isinstance(res, ModelResolution) and res.status != "found"


# ---------------------------------------------------------------- HF cache and hub (no network)


def test_hf_cache_snapshot_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    repo = tmp_path / "models--acme--tiny"
    write_model(repo / "snapshots" / "abc123", LLAMA, ("model.safetensors",))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    res = resolve_model("acme/tiny")
    assert res.found and res.source == "hf-cache" and res.model_type == "llama"
    assert res.weight_files == ("model.safetensors",)


def _hub_error(cls: type[Exception]) -> Exception:
    err = cls.__new__(cls)  # the real classes want an HTTP response; the type is what matters
    Exception.__init__(err, "simulated")
    return err


@pytest.mark.parametrize(
    "error_name, status",
    [
        ("RepositoryNotFoundError", "not-found"),
        ("GatedRepoError", "gated"),
        ("RemoteEntryNotFoundError", "invalid"),
    ],
)
def test_online_hub_answers(monkeypatch: pytest.MonkeyPatch, error_name: str, status: str) -> None:
    import huggingface_hub
    from huggingface_hub import errors

    def refuse(*args: object, **kw: object) -> None:
        raise _hub_error(getattr(errors, error_name))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    res = resolve_model(PLACEHOLDER, online=True)
    assert res.status == status and res.hub_checked


def test_online_but_unreachable_stays_unverified(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def no_network(*args: object, **kw: object) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    res = resolve_model(PLACEHOLDER, online=True)
    assert res.status == "offline-not-cached" and "not reachable" in res.message


def test_token_source_never_returns_the_token(tmp_path: Path) -> None:
    assert token_source({"HF_TOKEN": "hf_" + "a" * 30}, token_path=str(tmp_path / "none")) == "HF_TOKEN env"
    (tmp_path / "token").write_text("hf_" + "b" * 30)
    assert token_source({}, token_path=str(tmp_path / "token")) == "token file"
    assert token_source({}, token_path=str(tmp_path / "none")) is None


# ---------------------------------------------------------------- the model section's checks


def run_named(check_id: str, target: RunSpec, snapshot: dict) -> tuple[Status, str, object]:
    spec = next(s for s in load_checks() if s.id == check_id)
    result, _ = run_check(spec, DoctorContext.from_snapshot(target, snapshot))
    return result.status, result.summary, result.fix


HUB = HubFacts(
    token_source=None,
    offline_vars=(),
    cache_dir="/cache",
    endpoint="https://huggingface.co",
    hub_version="1.0",
)


def test_placeholder_warns_and_suggests_the_real_scout_id() -> None:
    res = resolve_model(PLACEHOLDER)
    status, summary, fix = run_named("model-resolves", RunSpec(model=PLACEHOLDER), {"model": res, "hub": HUB})
    assert status is Status.WARN and "cannot verify" in summary and SCOUT_ID in summary
    assert any("--online" in c for c in fix.commands) and any("hf download" in c for c in fix.commands)


def test_not_found_fails_with_the_real_scout_id() -> None:
    res = ModelResolution(
        PLACEHOLDER, "not-found", "the hub has no model", resolved_id=PLACEHOLDER, hub_checked=True
    )
    status, summary, fix = run_named("model-resolves", RunSpec(model=PLACEHOLDER), {"model": res})
    assert status is Status.FAIL and "does not exist" in summary
    assert SCOUT_ID in fix.summary


def test_gated_fails_with_login_and_licence_link() -> None:
    res = ModelResolution(SCOUT_ID, "gated", "gated", resolved_id=SCOUT_ID)
    status, _, fix = run_named("model-resolves", RunSpec(model=SCOUT_ID), {"model": res})
    assert status is Status.FAIL
    assert "hf auth login" in fix.commands and fix.link == f"https://huggingface.co/{SCOUT_ID}"


def test_invalid_folder_fails(tmp_path: Path) -> None:
    res = resolve_model(str(write_model(tmp_path / "m", '{"model_type": ')))
    status, summary, _ = run_named("model-resolves", RunSpec(model=str(tmp_path / "m")), {"model": res})
    assert status is Status.FAIL and "not valid JSON" in summary


def test_hub_access_shows_token_presence_only() -> None:
    hub = HubFacts("HF_TOKEN env", ("HF_HUB_OFFLINE",), "/cache", "https://huggingface.co", "1.0")
    res = resolve_model(SCOUT_ID)  # embedded: weights not downloaded
    status, summary, _ = run_named("hf-hub-access", RunSpec(model=SCOUT_ID), {"model": res, "hub": hub})
    assert status is Status.WARN and "HF_HUB_OFFLINE" in summary  # offline + nothing downloaded


def test_pickle_checkpoint_warns_and_remote_code_fails(tmp_path: Path) -> None:
    pickle_only = resolve_model(str(write_model(tmp_path / "p", LLAMA, ("pytorch_model.bin",))))
    status, summary, _ = run_named("checkpoint-format", RunSpec(model="p"), {"model": pickle_only})
    assert status is Status.WARN and "pickle" in summary
    remote = resolve_model(str(write_model(tmp_path / "r", {**LLAMA, "auto_map": {"AutoConfig": "c.C"}})))
    assert run_named("checkpoint-format", RunSpec(model="r"), {"model": remote})[0] is Status.FAIL
    allowed = RunSpec(model="r", trust_remote_code=True)
    assert run_named("checkpoint-format", allowed, {"model": remote})[0] is Status.PASS


def test_model_checks_skip_without_model() -> None:
    absent = Unavailable("no --model given", "not-applicable")
    for check_id in ("model-resolves", "hf-hub-access", "checkpoint-format"):
        assert run_named(check_id, RunSpec(), {"model": absent, "hub": absent})[0] is Status.SKIP
