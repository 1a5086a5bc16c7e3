#!/usr/bin/env bash
# The GPU measurements behind docs/benchmarks.md ("Long prefill at the card's limit") and
# docs/estimator-accuracy.md (held-out set 4), in parts that each end inside one 10-minute call on one
# H100 80GB (or an H200 capped with --max-memory 0=79GiB, which the parts pass).
#
#   bash benchmarks/gpu_suite.sh PART OUT
#
# PART:
#   reach    bf16 exactness of the lean path against eager and fp32 (tiny models, ~1 min); the Scout-shaped
#            4-layer model built (~40 s); the doctor's longest context for 79 GiB at --context 10M, then
#            `niah run` at 3M tokens and at 10 % above the longest (skipped before loading)   (~6–8 min)
#   speed    the Scout-shaped model again (a fresh machine has none); prefill seconds at 1M and 2M per path
#            (the lean path in full, today's and routed sampled), with the card's rates as the probe
#            measures them                                                                      (~6 min)
#   sweep    the Scout-shaped model; a 5-depth `niah run` sweep at 1M (the first trial a fresh prefill,
#            the next four reuse the prefix up to the previous needle)                          (~6 min)
#   scout48  the real Scout geometry: 48 full-width layers, pre-quantized bnb-4bit (~55 GiB, built layer by
#            layer on the GPU, ~1–2 min); the doctor's longest context for 79 GiB, then `niah run` at 8k,
#            at that longest context and at 10 % above it (skipped before loading)              (~8 min)
#   hybrids  the recurrent/hybrid held-out set under the machine's transformers, then (with the 5.25
#            wheels) under transformers 5.25, and transformers' hub kernels offline under 5.25    (~8 min)
#
# The GPU machine has no network: wheels travel beside the checkout (git-ignored, named in the call's
# carry; 64 MiB a call, so reach, speed, sweep and scout48 carry .whl and .carry/tok, hybrids .carry) and are installed
# when present — .whl/*.whl (bitsandbytes 0.50.2) into /tmp/site, .carry/tf525/*.whl (transformers
# 5.25.0, kernels 0.19.1, huggingface_hub 2.5.0 and the needs the image lacks) into /tmp/site525 for the
# 5.25 steps only. Fetched on a machine with the registry, in the repo's root:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .carry/tf525 transformers==5.25.0 kernels==0.19.1 huggingface_hub==2.5.0 httpx2==2.17.0 \
#       httpcore2==2.17.0 truststore tomlkit "click>=8.4.2,<9" "idna>=3.18" "anyio>=4.10" "regex>=2025.10.22"
# The tokenizer of the built models is TOKENIZER (default .carry/tok: tokenizer.json,
# tokenizer_config.json, chat_template.jinja of the demo model).
# Everything a part writes is packed into OUT/PART.tar.gz (the device tool brings back few files) and
# its log is OUT/PART.log.
set -uo pipefail

part=${1:?"usage: bash benchmarks/gpu_suite.sh reach|speed|sweep|scout48|hybrids OUT"}
out=${2:?"usage: bash benchmarks/gpu_suite.sh PART OUT"}
case $part in reach | speed | sweep | scout48 | hybrids) ;; *)
    echo "unknown part '$part': reach, speed, sweep, scout48 or hybrids" >&2
    exit 2
    ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
tokenizer=${TOKENIZER:-$repo/.carry/tok}
work=/tmp/gpu_suite/$part
scout=/dev/shm/scout4
mkdir -p "$out" "$work"
exec > >(tee "$out/$part.log") 2>&1

install_wheels() {  # TARGET WHEEL...: installed only where the wheels travelled
    local target=$1
    shift
    [ -e "${1:-}" ] || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

step() {  # one measurement: its command, wall time and exit status in the log; a failure ends nothing else
    echo "== $* ($(date -u +%H:%M:%S))"
    local start=$SECONDS
    "$@"
    echo "== exit $? after $((SECONDS - start)) s"
}

build_scout() {
    [ -f "$scout/config.json" ] || step python3 benchmarks/one_plan.py build "$scout" --tokenizer "$tokenizer" \
        --max-positions 16777216
}

cd "$repo" || exit 1
export PYTHONPATH=$repo PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
install_wheels /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

case $part in
reach)
    step python3 benchmarks/long_prefill.py exactness --out "$work/exactness"
    build_scout
    step python3 benchmarks/one_plan.py show "$scout" --budget 79GiB --ask 10M --run 3M --out "$work/reach"
    ;;
speed)
    build_scout
    step python3 benchmarks/long_prefill.py speed "$scout" --lengths 1M,2M --full lean --out "$work/speed"
    ;;
sweep)
    build_scout
    step python3 -m niah_run run --model "$scout" --quant bnb-4bit --max-memory 0=79GiB --lengths 1M \
        --depths 0,25,50,75,100 --max-new-tokens 4 --out "$work/sweep" -q
    ;;
scout48)
    step python3 benchmarks/scout_prequantized.py build /dev/shm/scout48 --layers 48 --tokenizer "$tokenizer"
    step python3 benchmarks/one_plan.py show /dev/shm/scout48 --budget 79GiB --ask 10M --out "$work/scout48"
    ;;
hybrids)
    step python3 benchmarks/hybrid_accuracy.py --out "$work/hybrid-image" --budget-s 150
    if install_wheels /tmp/site525 .carry/tf525/*.whl; then
        PYTHONPATH=/tmp/site525:$PYTHONPATH step python3 benchmarks/hybrid_accuracy.py --out "$work/hybrid-525" \
            --budget-s 150
        PYTHONPATH=/tmp/site525:$PYTHONPATH step python3 benchmarks/offline_kernels_demo.py --out "$work/offline"
    else
        echo "== no .carry/tf525 wheels: the transformers 5.25 steps are not run"
    fi
    ;;
esac
tar -czf "$out/$part.tar.gz" -C "$work" .
echo "== packed $(du -h "$out/$part.tar.gz" | cut -f1) into $out/$part.tar.gz"
