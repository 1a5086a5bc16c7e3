"""Pure-Python parts of the memory estimator: bnb storage rules, --gpus parsing, KV layout, placement."""

from __future__ import annotations

import pytest

from doctor.memory.gpus import gpus_from_nvml, parse_gpus
from doctor.memory.kv import KvLayer, kv_bytes_per_layer, kv_layers
from doctor.memory.placement import CPU, place_blocks
from doctor.memory.storage import bytes_4bit, bytes_int8, bytes_per_param_4bit
from run_plan.errors import UsageError

GIB = 1 << 30
SCOUT_TEXT = {
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 5120,
    "num_hidden_layers": 48,
}
# Llama 4 Scout: every 4th layer is global (NoPE), the other 36 are chunked at 8192 (Llama 4 config: no_rope_layers).
SCOUT_LAYOUT = [
    {"kind": "full" if (i + 1) % 4 == 0 else "window", "window": None if (i + 1) % 4 == 0 else 8192}
    for i in range(48)
]


def test_4bit_bytes_per_param_match_bitsandbytes() -> None:
    assert bytes_per_param_4bit(False) == pytest.approx(0.5625)
    assert bytes_per_param_4bit(True) == pytest.approx(0.515869, abs=1e-6)
    n = 5120 * 5120
    assert bytes_4bit(n, True) / n == pytest.approx(0.51587, abs=1e-4)  # + ~1.1 KiB per tensor
    assert bytes_4bit(n, False) / n == pytest.approx(0.5625, abs=1e-4)


def test_int8_is_one_byte_plus_a_scale_per_row() -> None:
    assert bytes_int8(5120, 1024) == 5120 * 1024 + 4 * 1024


@pytest.mark.parametrize(
    ("spec", "count", "each"),
    [
        ("1xH100-80GB", 1, 81559 << 20),
        ("2x80GiB", 2, 80 * GIB),
        ("H200", 1, 143771 << 20),
        ("4xA100-40GB", 4, 40960 << 20),
        ("1x24GB", 1, 24 * 10**9),
    ],
)
def test_parse_gpus(spec: str, count: int, each: int) -> None:
    cards = parse_gpus(spec)
    assert len(cards) == count
    assert all(c.capacity_bytes == each for c in cards)
    assert [c.index for c in cards] == list(range(count))


@pytest.mark.parametrize(
    ("spec", "mib"),
    [
        # NVML memory.total (MiB) of the cards people rent, under the names they type
        ("1xA10G", 23028),
        ("1xL4", 23034),
        ("1xL40S", 46068),
        ("1xA100-40GB", 40960),
        ("1xA100-80GB", 81920),
        ("1xH100-PCIe", 81559),
        ("1xH100-SXM", 81559),
        ("1xH100-NVL", 95830),
        ("1xH200", 143771),
        ("1xGH200", 97871),
        ("1xB200", 183359),
        ("1xRTX-4090", 24564),
        ("1xRTX5090", 32607),
        ("1xA6000", 49140),
        ("1xRTX-A6000", 49140),
        ("1xH100-80G", 81559),
        ("1xH100 80GB HBM3", 81559),
        ("NVIDIA H100 80GB HBM3", 81559),
        ("1x4090", 24564),
    ],
)
def test_gpu_table_and_aliases(spec: str, mib: int) -> None:
    assert parse_gpus(spec)[0].capacity_bytes == mib << 20


def test_bare_size_is_gib_and_sizes_in_gb_are_decimal() -> None:
    assert [c.capacity_bytes for c in parse_gpus("2x80")] == [80 * GIB] * 2
    assert parse_gpus("1x48GB")[0].capacity_bytes == 48 * 10**9
    assert len(parse_gpus("1xH100-80GB,2xA100-40GB")) == 3


@pytest.mark.parametrize(
    "spec", ["", "0xH100", "1xWarpDrive", "abc", "2xfoo", "1xH100-40GB", "1x5000", "65xH100"]
)
def test_bad_gpu_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_gpus(spec)
    assert info.value.exit_code == 2
    assert "2x80GiB" in (info.value.hint or "")  # the accepted forms


def test_a_near_miss_suggests_the_card() -> None:
    with pytest.raises(UsageError, match="did you mean H100"):
        parse_gpus("1xH10")


def test_gpus_from_nvml_accepts_dataclass_like_facts() -> None:
    class Gpu:
        index, name, memory_total_bytes = 0, "NVIDIA H100 80GB HBM3", 85520809984

    class Facts:
        gpus = (Gpu(),)

    cards = gpus_from_nvml(Facts())
    assert cards[0].capacity_bytes == 85520809984 and cards[0].source == "nvml"


def test_scout_10m_kv_is_about_481_gib_chunk_aware() -> None:
    layers = kv_layers(SCOUT_TEXT, SCOUT_LAYOUT)
    total = sum(kv_bytes_per_layer(SCOUT_TEXT, layers, 10 * 1024 * 1024, 8192, 2))
    assert total / GIB == pytest.approx(481, rel=0.01)
    full = sum(kv_bytes_per_layer(SCOUT_TEXT, kv_layers(SCOUT_TEXT, None), 10 * 1024 * 1024, 8192, 2))
    assert full / GIB == pytest.approx(1920, rel=0.001)  # every layer full (transformers 4.51 DynamicCache())


def test_window_layer_keeps_window_minus_one_plus_chunk() -> None:
    layer = [KvLayer("window", 4096)]
    cfg = {"num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 1}
    assert kv_bytes_per_layer(cfg, layer, 1000, 512, 1) == [2 * 1000]
    assert kv_bytes_per_layer(cfg, layer, 100_000, 512, 1) == [2 * (4095 + 512)]


def test_placement_fills_in_order_and_spills_to_cpu() -> None:
    assert place_blocks([4, 4, 4], [20]) == [0, 0, 0]
    # accelerate keeps room on its main device (GPU 0) for the largest block still to place
    assert place_blocks([4, 4, 4], [9]) == [0, CPU, CPU]
    assert place_blocks([4, 4, 4], [12]) == [0, 0, 0]
    two = place_blocks([4] * 6, [100, 100])
    assert two.count(0) >= 3 and two.count(1) >= 1 and CPU not in two  # balanced like accelerate's "auto"
