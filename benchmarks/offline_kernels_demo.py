"""transformers' hub kernels, offline: the doctor FAILs the load that would fetch them, and `niah run`
loads without them. On a GPU machine with transformers ≥ 5.25 and the `kernels` package.

    python benchmarks/offline_kernels_demo.py --out results/offline-kernels     # ≈ 1 min on an H100

transformers 5.25 kernelizes models by default on CUDA (`use_kernels` unless USE_HUB_KERNELS turns it
off) and fetches `kernels-community/*` repositories at load; with HF_HUB_OFFLINE=1 and none of them in
the cache, `from_pretrained` of a plain local Llama fails ("Version 2 of 'kernels-community/rotary' is not
available in the local cache ..."). Steps, each offline with an empty Hugging Face cache:

1. a tiny Llama folder (random weights, a byte-level BPE tokenizer trained here, a chat template);
2. transformers' own default load (what `niah run` did before it passed `use_kernels=False`):
   `from_pretrained(folder, device_map="cuda")` — expected to fail with the message above;
3. `doctor --only hub-kernels-offline` with USE_HUB_KERNELS=1 (a load that kernelizes): expected FAIL;
4. the same doctor without it (niah loads with use_kernels=False): expected PASS;
5. `niah run` without it: expected to finish (exit 0); with USE_HUB_KERNELS=1: expected to stop at the
   preflight (exit 1) before loading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the of and a to in is was he for it with as his on be at by i this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said"
).split()


def build_model(folder: Path) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(64)) for i in range(400)]
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=1024,
            special_tokens=["<|begin|>", "<|end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin|>", eos_token="<|end|>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|begin|>' + m['role'] + '\\n' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|begin|>assistant\\n' }}{% endif %}"
    )
    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def default_load(folder: Path) -> dict[str, Any]:
    """transformers' own default from_pretrained on CUDA (what niah called before use_kernels=False)."""
    code = (
        "import sys, transformers\n"
        "try:\n"
        "    transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map='cuda')\n"
        "    print('LOADED')\n"
        "except Exception as exc:\n"
        "    print('FAILED', type(exc).__name__, str(exc).splitlines()[0])\n"
    )
    return _run([sys.executable, "-c", code, str(folder)])


def _run(argv: list[str], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ, **(extra_env or {}))
    started = time.time()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400, check=False)
    return {
        "argv": argv[-8:],
        "env": extra_env or {},
        "rc": proc.returncode,
        "seconds": round(time.time() - started, 1),
        "stdout": proc.stdout,
        "stderr_tail": proc.stderr[-800:],
    }


def doctor(folder: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    result = _run(
        [
            sys.executable,
            "-m",
            "doctor",
            "--model",
            str(folder),
            "--context",
            "1024",
            "--only",
            "hub-kernels-offline,attn-model-support",
            "--format",
            "json",
        ],
        extra_env,
    )
    try:
        checks = json.loads(result.pop("stdout"))
    except ValueError:
        checks = {}
    result["checks"] = {c["id"]: (c["status"], c["summary"]) for c in checks.get("checks", [])}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the JSON result")
    args = parser.parse_args()
    import transformers

    work = Path(tempfile.mkdtemp(prefix="niah-offline-kernels-"))
    os.environ.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(work / "empty-hf-home"),  # no kernel in the cache
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    os.environ.pop("USE_HUB_KERNELS", None)
    folder = work / "tiny-llama"
    build_model(folder)
    steps = {
        "transformers default load (before)": default_load(folder),
        "doctor, USE_HUB_KERNELS=1": doctor(folder, {"USE_HUB_KERNELS": "1"}),
        "doctor (niah: use_kernels=False)": doctor(folder),
        "niah run (after)": _run(
            [
                sys.executable,
                "-m",
                "niah_run",
                "run",
                "--model",
                str(folder),
                "--lengths",
                "512",
                "--depths",
                "50",
                "--out",
                str(work / "run"),
                "-q",
            ]
        ),
        "niah run, USE_HUB_KERNELS=1": _run(
            [
                sys.executable,
                "-m",
                "niah_run",
                "run",
                "--model",
                str(folder),
                "--lengths",
                "512",
                "--depths",
                "50",
                "--out",
                str(work / "run-kernels"),
                "-q",
            ],
            {"USE_HUB_KERNELS": "1"},
        ),
    }
    result = {"transformers": transformers.__version__, "steps": steps}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"offline_kernels_tf{transformers.__version__}.json").write_text(
        json.dumps(result, indent=1)
    )
    print(f"transformers {transformers.__version__}")
    for name, step in steps.items():
        checks = "; ".join(f"{k}: {s} — {m[:160]}" for k, (s, m) in (step.get("checks") or {}).items())
        lines = (step.get("stdout") or "").strip().splitlines() + step["stderr_tail"].strip().splitlines()
        shown = checks or (lines or [""])[-1][:240]
        print(f"- {name}: rc {step['rc']} ({step['seconds']} s) {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
