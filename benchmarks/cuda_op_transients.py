"""Which aten ops hold memory on CUDA beyond their outputs? Measured per op, on the models we know.

    python benchmarks/cuda_op_transients.py --out transients.json   # on an NVIDIA GPU (it reads CUDA's allocator)

The memory trace (`doctor/memory/trace.py`) runs a model's forward on the meta device and counts the
bytes each op's *outputs* take. That is the whole story only for ops whose CUDA kernels allocate nothing
else; KNOWN_OPS lists them, and any other op is charged one more output-sized buffer. This benchmark
checks that list on the GPU: each case's model (the calibration and first two evaluation sets of
`estimator_accuracy.py`, bf16, as `niah` loads them) prefills 8,192 tokens in two chunks of 4,096 under a
dispatch mode that, around every aten op, reads the allocator:

    transient = max_memory_allocated() during the op - memory_allocated() after it

i.e. what the op held while it ran and gave back before returning. Per op name the worst case is kept,
with its ratio to the op's output bytes. Nothing is asserted; the table says which ops hide temporaries.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 1 << 20


def _survey_mode(torch: Any, worst: dict[str, dict[str, Any]]) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Transients(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types_: Any, args: Any = (), kwargs: Any = None) -> Any:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = func(*args, **(kwargs or {}))
            after = torch.cuda.memory_allocated()
            transient = torch.cuda.max_memory_allocated() - max(before, after)
            outputs = sum(
                t.untyped_storage().nbytes() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)
            )
            name = str(func.overloadpacket.__name__)
            entry = worst.setdefault(name, {"calls": 0, "transient": 0, "output": 0, "shapes": None})
            entry["calls"] += 1
            if transient > entry["transient"]:
                shapes = [
                    (list(t.shape), str(t.dtype).replace("torch.", ""), t.is_contiguous())
                    for t in tree_flatten((args, kwargs))[0]
                    if isinstance(t, torch.Tensor)
                ]
                entry.update(transient=transient, output=after - before, shapes=shapes[:4])
            entry["max_output"] = max(entry.get("max_output", 0), outputs)
            return out

    return Transients()


def survey_case(
    torch: Any, transformers: Any, case: dict[str, Any], device: str, context: int, chunk: int
) -> dict[str, Any]:
    from benchmarks.estimator_accuracy import _load, _prefill

    config = transformers.AutoConfig.for_model(**case["config"])
    with tempfile.TemporaryDirectory() as workdir:
        model = _load(torch, transformers, case, "bf16", config, device, workdir)
    worst: dict[str, dict[str, Any]] = {}
    with _survey_mode(torch, worst):  # the same chunked prefill the accuracy benchmark measures
        _prefill(torch, transformers, model, context, chunk, device, case["config"]["vocab_size"])
    dispatched = getattr(model.config, "_attn_implementation", None)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"case": case["name"], "attn_gpu": dispatched, "ops": worst}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="transients.json")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()

    import torch
    import transformers

    from benchmarks.estimator_accuracy import _cases
    from doctor.memory.trace import KNOWN_OPS

    rows = []
    for case in _cases(tiny=False):
        if case["set"] not in ("calibration", "evaluation", "evaluation2") or "bf16" not in case["modes"]:
            continue
        if args.only and case["name"] not in args.only:
            continue
        try:
            rows.append(survey_case(torch, transformers, case, "cuda", args.context, args.chunk))
        except Exception as exc:  # noqa: BLE001 - report the case, keep going
            rows.append({"case": case["name"], "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(rows[-1].get("case"), rows[-1].get("error") or "ok", flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "context": args.context,
        "chunk": args.chunk,
        "rows": rows,
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(
        "| case | op | known | calls | worst transient MiB | its output MiB | transient / output | inputs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for name, e in sorted((row.get("ops") or {}).items(), key=lambda kv: -kv[1]["transient"]):
            if e["transient"] < MIB:
                continue
            ratio = e["transient"] / e["output"] if e["output"] > 0 else float("inf")
            print(
                f"| {row['case']} | {name} | {'yes' if name in KNOWN_OPS else 'no'} | {e['calls']} | "
                f"{e['transient'] / MIB:.1f} | {e['output'] / MIB:.1f} | {ratio:.2f} | {e['shapes']} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
