"""The GPU itself: the faults of a rented GPU that no environment dump shows.

Each check reads NVML (through the `gpu-health` probe, no root, no extra tools) or the kernel log,
and ends in one of four actions: nothing to do, reset the GPU, reboot the machine, or open a
support ticket with the provider. The rules follow NVIDIA's own guidance as the cluster health
tools apply it (DCGM's deployment checks, the AWS and Azure node health checks, gpud, sichek):

- uncorrectable ECC errors since the last reset, a pending row remap or page retirement → reset;
  a failed row remap (no spare rows left) → ticket;
- Xid 79 (fallen off the bus) → reboot; Xid 48/95 (uncorrectable ECC) → reset; application Xids
  (13, 31, 43, 45) are the application's, not the GPU's;
- hardware thermal / power-brake slowdown and a PCIe link trained below its width → ticket;
- NVSwitch fabric not started (CUDA error 802 while `nvidia-smi` looks fine) → start the fabric
  manager; PCIe cards have no fabric, and NVML says so (`not-supported`), so they are never judged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.nvml import GPU_HEALTH
from doctor.probes.nvml_health import GpuHealth, GpuHealthFacts, XidEvent
from doctor.probes.torch_live import TORCH_LIVE, GemmResult, TorchLive
from doctor.registry import Outcome, check
from doctor.report.model import Command, Evidence, Fix, Status

SECTION = "gpu"
NEEDS = (GPU_HEALTH,)
SMI_Q = "nvidia-smi -q -i {index} -d {section}"
HOW_ECC = "nvidia-smi --query-gpu=index,ecc.mode.current,ecc.errors.uncorrected.volatile.total,ecc.errors.uncorrected.aggregate.total --format=csv"
HOW_REMAP = "nvidia-smi --query-remapped-rows=gpu_bus_id,remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure --format=csv"
HOW_RETIRED = "nvidia-smi -q -d PAGE_RETIREMENT"
HOW_CLOCKS = "nvidia-smi --query-gpu=index,clocks_event_reasons.active,temperature.gpu --format=csv"
HOW_PCIE = "nvidia-smi --query-gpu=index,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max --format=csv"
HOW_FABRIC = "nvidia-smi -q | grep -A4 -i fabric; systemctl status nvidia-fabricmanager"
HOW_PERSISTENCE = "nvidia-smi --query-gpu=index,persistence_mode --format=csv"
HOW_XID = "sudo dmesg -T | grep -i xid"
HOW_DRIVER = "cat /proc/driver/nvidia/version; nvidia-smi | head -4"
HOW_GEMM = "python -m doctor --live --only gpu-known-answer"


def reset_fix(*indices: int) -> Fix:
    """Reset these GPUs (all of them when none is named: nvidia-smi's own default)."""
    resets: list[Command] = [("sudo", "nvidia-smi", "--gpu-reset", "-i", str(i)) for i in indices]
    return Fix(
        "Reset the GPU (it must be idle), or ask the provider to; open a ticket if it happens again",
        (
            "nvidia-smi --query-compute-apps=pid,process_name --format=csv  # must be empty",
            *(resets or ["sudo nvidia-smi --gpu-reset"]),
        ),
    )


RESET = reset_fix()
REBOOT = Fix(
    "Reboot the machine (a GPU reset cannot recover this); open a support ticket if it happens again",
    ("sudo reboot",),
)
TICKET = Fix(
    "Open a support ticket with the provider: this GPU needs service or replacement; attach this report",
    ("python -m doctor --format markdown -o gpu-ticket.md", "sudo nvidia-bug-report.sh"),
)


def _health(ctx: DoctorContext) -> GpuHealthFacts:
    return ctx.needed(GPU_HEALTH)


def _queryable(facts: GpuHealthFacts) -> list[GpuHealth]:
    return [g for g in facts.gpus if g.query_error is None]


def _no_gpus(facts: GpuHealthFacts) -> Outcome | None:
    if not facts.gpus:
        why = facts.driver.init_error or "NVML reports no GPUs"
        return Outcome.skip(f"no NVIDIA GPU visible ({why})")
    if not _queryable(facts):
        return Outcome.skip("NVML cannot query any GPU (see gpu-devices)")
    return None


def _label(gpu: GpuHealth) -> str:
    return f"GPU {gpu.index}"


def _why_missing(gpus: Iterable[GpuHealth], *keys: str) -> str:
    reasons = {g.unavailable.get(k) for g in gpus for k in keys} - {None}
    return ", ".join(sorted(str(r) for r in reasons)) or "no value"


# ---------------------------------------------------------------- driver stack


@check(
    "nvidia-driver-library",
    title="NVML library matches the loaded kernel driver",
    section=SECTION,
    needs=NEEDS,
)
def nvidia_driver_library(ctx: DoctorContext) -> Outcome:
    stack = _health(ctx).driver
    evidence = [
        Evidence(
            "nvidia.kernel_module_version",
            stack.kernel_module_version,
            "/proc/driver/nvidia/version",
            HOW_DRIVER,
        ),
        Evidence("nvml.library_version", stack.nvml_library_version, "nvml", "nvidia-smi | head -4"),
        Evidence(
            "nvml.library_path",
            stack.nvml_library_path,
            "/proc/self/maps",
            "ls -l $(ldconfig -p | awk '/libnvidia-ml.so.1/{print $NF}')",
        ),
    ]
    if stack.init_error:
        evidence.append(Evidence("nvml.init_error", stack.init_error, "nvml", "nvidia-smi"))
    if stack.mismatch:
        lib = stack.library_driver_version or "a different version"
        kernel = stack.kernel_module_version or "another version"
        return Outcome.fail(
            f"the NVIDIA user-space libraries ({lib}) do not match the loaded kernel module ({kernel}): "
            'a driver upgrade without a reboot ("Failed to initialize NVML: Driver/library version mismatch"); '
            "CUDA will not start",
            evidence,
            Fix(
                "Reboot so the new kernel module loads (or unload and reload the nvidia modules)",
                ("sudo reboot", "grep -i nvidia /var/log/apt/history.log  # who upgraded it"),
            ),
        )
    if stack.init_error:
        return Outcome.skip(f"NVML did not start ({stack.init_error}); see nvidia-driver", evidence)
    if stack.kernel_module_version is None:
        return Outcome.ok(
            f"NVML started with driver {stack.nvml_driver_version} (kernel module version "
            "not readable here; NVML's own start-up check passed)",
            evidence,
        )
    return Outcome.ok(f"kernel module {stack.kernel_module_version} matches the NVML library", evidence)


# ---------------------------------------------------------------- Xid


@dataclass(frozen=True)
class XidRule:
    meaning: str
    status: Status
    action: str  # "reboot", "reset", "ticket", "restart-app", "monitor", "look-up"


XID_RULES: dict[int, XidRule] = {
    13: XidRule("graphics engine exception (usually the application's bug)", Status.PASS, "restart-app"),
    31: XidRule("GPU memory page fault (usually the application's bug)", Status.PASS, "restart-app"),
    43: XidRule("GPU stopped processing (the application was killed or faulted)", Status.PASS, "restart-app"),
    45: XidRule("preemptive cleanup after an earlier error", Status.PASS, "restart-app"),
    48: XidRule("double-bit (uncorrectable) ECC error", Status.FAIL, "reset"),
    61: XidRule("internal micro-controller breakpoint", Status.FAIL, "reset"),
    62: XidRule("internal micro-controller halt", Status.FAIL, "reset"),
    63: XidRule(
        "ECC page retirement / row remap recorded (takes effect at the next reset)", Status.WARN, "reset"
    ),
    64: XidRule("ECC page retirement / row remap failure", Status.FAIL, "ticket"),
    68: XidRule("video processor exception", Status.PASS, "restart-app"),
    74: XidRule("NVLink error", Status.FAIL, "reset"),
    79: XidRule("GPU has fallen off the bus", Status.FAIL, "reboot"),
    92: XidRule("high single-bit ECC error rate", Status.WARN, "monitor"),
    94: XidRule(
        "contained uncorrectable ECC error (the affected application was stopped)", Status.WARN, "restart-app"
    ),
    95: XidRule("uncontained uncorrectable ECC error", Status.FAIL, "reset"),
    119: XidRule("GSP firmware RPC timeout", Status.FAIL, "reset"),
    120: XidRule("GSP firmware error", Status.FAIL, "reset"),
    140: XidRule("unrecovered ECC error", Status.FAIL, "reset"),
}
_ECC_XIDS = {
    48,
    94,
    95,
    140,
}  # cleared by a reset: the volatile uncorrectable count tells if one happened since
_ACTION_RANK = {"reboot": 5, "ticket": 4, "reset": 3, "look-up": 2, "monitor": 1, "restart-app": 0}
_ACTION_FIX = {
    "reboot": REBOOT,
    "reset": RESET,
    "ticket": TICKET,
    "monitor": Fix("Watch the count; open a ticket if it keeps rising", (HOW_XID,)),
    "look-up": Fix(
        "Look the code up in NVIDIA's Xid catalog and act on its recommended action",
        (HOW_XID,),
        "https://docs.nvidia.com/deploy/xid-errors/",
    ),
}


def _xid154_action(text: str) -> XidRule:
    """Xid 154 names its recovery action in words ("Node Reboot Required", "GPU Reset Required"...)."""
    lowered = text.lower()
    if "reboot" in lowered:
        return XidRule(f"GPU recovery action: {text}", Status.FAIL, "reboot")
    if "reset" in lowered:
        return XidRule(f"GPU recovery action: {text}", Status.FAIL, "reset")
    return XidRule(f"GPU recovery action: {text}", Status.PASS, "restart-app")


def classify_xid(event: XidEvent, gpus: dict[int, GpuHealth]) -> XidRule:
    if event.code == 154:
        return _xid154_action(event.text)
    rule = XID_RULES.get(event.code) or XidRule("not in the doctor's table", Status.WARN, "look-up")
    gpu = gpus.get(event.gpu_index) if event.gpu_index is not None else None
    if (
        event.code in _ECC_XIDS
        and rule.status is Status.FAIL
        and gpu is not None
        and gpu.ecc_volatile_uncorrected == 0
    ):
        # The volatile counter restarts at a GPU reset: 0 now means the GPU was reset after this Xid.
        return XidRule(
            rule.meaning + " earlier this boot; the GPU has been reset since", Status.WARN, "monitor"
        )
    return rule


def _where(event: XidEvent) -> str:
    return f"GPU {event.gpu_index}" if event.gpu_index is not None else f"PCI {event.pci}"


@check("gpu-xid-errors", title="Xid errors in the kernel log since boot", section=SECTION, needs=NEEDS)
def gpu_xid_errors(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    log = facts.xid
    if not log.readable:
        return Outcome.skip(
            f"kernel log not readable: {log.reason}; run `{HOW_XID}` on the host",
            [Evidence("kernel_log", log.reason, log.source, HOW_XID)],
        )
    if not log.events:
        return Outcome.ok(
            "no Xid errors in the kernel log since boot", [Evidence("xid.count", 0, log.source, HOW_XID)]
        )
    by_index = {g.index: g for g in facts.gpus}
    judged = [(e, classify_xid(e, by_index)) for e in log.events]
    evidence = [Evidence("xid.count", len(judged), log.source, HOW_XID)]
    # One line per (GPU, code): a flapping GPU can log thousands of identical Xids.
    seen: dict[tuple[str, int], tuple[XidEvent, XidRule, int]] = {}
    for event, rule in judged:
        key = (_where(event), event.code)
        first = seen.get(key)
        seen[key] = (first[0], first[1], first[2] + 1) if first else (event, rule, 1)
    for (where, code), (event, rule, count) in seen.items():
        evidence.append(
            Evidence(
                f"xid[{where}].{code}", f"{count}x {rule.meaning}: {event.text}"[:300], log.source, HOW_XID
            )
        )
    worst = max(
        (r.status for _, r in judged), key=lambda s: {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}[s]
    )
    bad = [(e, r, n) for e, r, n in seen.values() if r.status is worst]
    bad.sort(key=lambda t: -_ACTION_RANK[t[1].action])
    event, rule, _ = bad[0]
    headline = "; ".join(f"Xid {e.code} on {_where(e)}: {r.meaning}" for e, r, _ in bad[:3])
    if worst is Status.PASS:
        return Outcome.ok(
            f"only application-level Xids since boot ({headline}): the GPU is fine, the "
            "application that caused them needs fixing",
            evidence,
        )
    fix = _ACTION_FIX[rule.action]
    action = {
        "reboot": "reboot the machine",
        "reset": "reset the GPU",
        "ticket": "open a support ticket",
        "monitor": "keep an eye on it",
        "look-up": "look the code up",
    }.get(rule.action, rule.action)
    summary = f"{headline} — {action}"
    return (
        Outcome.fail(summary, evidence, fix) if worst is Status.FAIL else Outcome.warn(summary, evidence, fix)
    )


# ---------------------------------------------------------------- ECC, row remapping, page retirement


@check(
    "gpu-ecc-errors", title="Uncorrectable ECC errors since the last GPU reset", section=SECTION, needs=NEEDS
)
def gpu_ecc_errors(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    if (skip := _no_gpus(facts)) is not None:
        return skip
    gpus = _queryable(facts)
    evidence = [
        Evidence(
            f"gpu[{g.index}].ecc",
            {
                "enabled": g.ecc_enabled,
                "volatile_uncorrected": g.ecc_volatile_uncorrected,
                "volatile_corrected": g.ecc_volatile_corrected,
                "aggregate_uncorrected": g.ecc_aggregate_uncorrected,
                "aggregate_corrected": g.ecc_aggregate_corrected,
            },
            "nvml",
            HOW_ECC,
        )
        for g in gpus
    ]
    if all(g.ecc_enabled is None for g in gpus):
        return Outcome.skip(
            f"NVML reports no ECC state ({_why_missing(gpus, 'ecc_enabled')}): consumer "
            "GPUs and some vGPUs have none",
            evidence,
        )
    broken = [g for g in gpus if (g.ecc_volatile_uncorrected or 0) > 0]
    if broken:
        parts = [
            f"{_label(g)} has {g.ecc_volatile_uncorrected} uncorrectable ECC error(s) since its last reset"
            for g in broken
        ]
        return Outcome.fail(
            "; ".join(parts) + ": results computed on it may be corrupt",
            evidence,
            reset_fix(*(g.index for g in broken)),
        )
    off = [g for g in gpus if g.ecc_enabled is False]
    if off:
        return Outcome.warn(
            f"ECC is off on {', '.join(_label(g) for g in off)}: memory errors would corrupt results silently",
            evidence,
            Fix(
                "Ask the provider (or an admin) to enable ECC; it takes effect after a reboot",
                [*(("sudo", "nvidia-smi", "-i", str(g.index), "-e", "1") for g in off), "sudo reboot"],
            ),
        )
    lifetime = sum(g.ecc_aggregate_uncorrected or 0 for g in gpus)
    note = f" ({lifetime} over the boards' lifetime, already repaired)" if lifetime else ""
    return Outcome.ok(
        f"ECC on, 0 uncorrectable errors since the last reset on {len(gpus)} GPU(s){note}", evidence
    )


@check(
    "gpu-memory-remap",
    title="Row remapping / page retirement: pending or failed",
    section=SECTION,
    needs=NEEDS,
)
def gpu_memory_remap(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    if (skip := _no_gpus(facts)) is not None:
        return skip
    gpus = _queryable(facts)
    evidence = []
    for g in gpus:
        if g.remap_pending is not None:
            evidence.append(
                Evidence(
                    f"gpu[{g.index}].remapped_rows",
                    {
                        "correctable": g.remapped_rows_correctable,
                        "uncorrectable": g.remapped_rows_uncorrectable,
                        "pending": g.remap_pending,
                        "failure": g.remap_failed,
                    },
                    "nvml",
                    HOW_REMAP,
                )
            )
        elif g.retired_pages_pending is not None:
            evidence.append(
                Evidence(
                    f"gpu[{g.index}].retired_pages",
                    {
                        "single_bit": g.retired_pages_sbe,
                        "double_bit": g.retired_pages_dbe,
                        "pending": g.retired_pages_pending,
                    },
                    "nvml",
                    HOW_RETIRED,
                )
            )
    if not evidence:
        return Outcome.skip(
            "NVML reports neither row remapping nor page retirement here "
            f"({_why_missing(gpus, 'remapped_rows', 'retired_pages_pending')})"
        )
    failed = [g for g in gpus if g.remap_failed]
    if failed:
        return Outcome.fail(
            f"row remapping failed on {', '.join(_label(g) for g in failed)}: the GPU has no spare memory rows "
            "left, so a bad row stays in use",
            evidence,
            TICKET,
        )
    pending = [g for g in gpus if g.remap_pending or g.retired_pages_pending]
    if pending:
        return Outcome.fail(
            f"{', '.join(_label(g) for g in pending)}: a memory row remap / page retirement is pending; the bad "
            "memory stays in use until the GPU is reset",
            evidence,
            reset_fix(*(g.index for g in pending)),
        )
    rows = sum((g.remapped_rows_uncorrectable or 0) + (g.remapped_rows_correctable or 0) for g in gpus)
    pages = sum((g.retired_pages_sbe or 0) + (g.retired_pages_dbe or 0) for g in gpus)
    done = f"{rows} row(s) remapped" if rows or not pages else f"{pages} page(s) retired"
    return Outcome.ok(
        f"nothing pending or failed on {len(gpus)} GPU(s) ({done} over the boards' lifetime)", evidence
    )


# ---------------------------------------------------------------- clocks


_SLOWDOWNS = {
    "hw_thermal_slowdown": "hardware thermal slowdown",
    "sw_thermal_slowdown": "software thermal slowdown",
    "hw_power_brake_slowdown": "hardware power-brake slowdown",
    "hw_slowdown": "hardware slowdown (thermal or power signal)",
}


@check("gpu-clock-throttle", title="Clocks held down by heat or power", section=SECTION, needs=NEEDS)
def gpu_clock_throttle(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    if (skip := _no_gpus(facts)) is not None:
        return skip
    gpus = _queryable(facts)
    evidence = [
        Evidence(
            f"gpu[{g.index}].clock_event_reasons",
            {"active": list(g.active_clock_reasons) or ["none"], "temperature_c": g.temperature_c},
            "nvml",
            HOW_CLOCKS,
        )
        for g in gpus
        if g.clock_event_reasons is not None
    ]
    if not evidence:
        return Outcome.skip(
            f"NVML reports no clock-event reasons ({_why_missing(gpus, 'clock_event_reasons')})"
        )
    slow = [(g, [_SLOWDOWNS[r] for r in g.active_clock_reasons if r in _SLOWDOWNS]) for g in gpus]
    slow = [(g, reasons) for g, reasons in slow if reasons]
    if slow:
        parts = [
            f"{_label(g)}: {', '.join(reasons)}"
            + (f" at {g.temperature_c} °C" if g.temperature_c is not None else "")
            for g, reasons in slow
        ]
        return Outcome.warn(
            "; ".join(parts) + " — clocks are cut, so the run will be slower than this GPU should be",
            evidence,
            TICKET,
        )
    benign = sorted({r for g in gpus for r in g.active_clock_reasons})
    return Outcome.ok(
        f"no thermal or power slowdown on {len(evidence)} GPU(s)"
        + (f" (active: {', '.join(benign)})" if benign else ""),
        evidence,
    )


# ---------------------------------------------------------------- PCIe


@check(
    "gpu-pcie-link",
    title="PCIe link: trained generation and width vs the maximum",
    section=SECTION,
    needs=NEEDS,
)
def gpu_pcie_link(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    if (skip := _no_gpus(facts)) is not None:
        return skip
    gpus = [g for g in _queryable(facts) if g.pcie_width_current is not None and g.pcie_width_max is not None]
    if not gpus:
        return Outcome.skip(
            f"NVML reports no PCIe link ({_why_missing(_queryable(facts), 'pcie_width_current')}): "
            "e.g. a GH200, whose GPU talks to the CPU over NVLink-C2C"
        )
    evidence = [
        Evidence(
            f"gpu[{g.index}].pcie",
            {
                "gen_current": g.pcie_gen_current,
                "gen_max": g.pcie_gen_max,
                "gen_gpu_max": g.pcie_gen_gpu_max,
                "width_current": g.pcie_width_current,
                "width_max": g.pcie_width_max,
            },
            "nvml",
            HOW_PCIE,
        )
        for g in gpus
    ]
    problems = []
    idle_notes = []
    for g in gpus:
        width, widest = g.pcie_width_current, g.pcie_width_max
        if width is not None and widest is not None and width < widest:
            problems.append(f"{_label(g)} link is x{width} of x{widest}")
        if (
            g.pcie_gen_current is not None
            and g.pcie_gen_max is not None
            and g.pcie_gen_current < g.pcie_gen_max
        ):
            # GPUs drop the link to Gen1 when idle to save power and train up under load: not a fault.
            idle = "gpu_idle" in g.active_clock_reasons or g.utilization_gpu_percent == 0
            if idle:
                idle_notes.append(f"{_label(g)} idles at Gen{g.pcie_gen_current}")
            else:
                problems.append(
                    f"{_label(g)} runs at Gen{g.pcie_gen_current} of Gen{g.pcie_gen_max} under load"
                )
    if problems:
        return Outcome.warn(
            "; ".join(problems) + ": host↔GPU copies (loading weights, CPU offload) run at a fraction of the "
            "link's speed; a link trained below its rating does not recover by itself",
            evidence,
            Fix(
                "Open a support ticket: the GPU's riser, cable or slot needs reseating or replacement",
                TICKET.commands,
            ),
        )
    first = gpus[0]
    line = (
        f"Gen{first.pcie_gen_max} x{first.pcie_width_max}"
        if first.pcie_gen_max
        else f"x{first.pcie_width_max}"
    )
    note = f" ({'; '.join(idle_notes)}: power saving, it trains up under load)" if idle_notes else ""
    return Outcome.ok(f"{len(gpus)} GPU(s) at full link width, {line}{note}", evidence)


# ---------------------------------------------------------------- NVSwitch fabric


def _cuda_works(ctx: DoctorContext) -> bool | None:
    live = ctx.probe(TORCH_LIVE)
    if not isinstance(live, TorchLive):
        return None
    return bool(live.cuda_available and live.device_count and not any(not r.ok for r in live.gemm))


def _cuda_error_802(ctx: DoctorContext) -> bool:
    live = ctx.probe(TORCH_LIVE)
    if isinstance(live, Unavailable):
        return False
    text = f"{live.init_error} {' '.join(live.warnings)}".lower()
    return "802" in text or "system not yet initialized" in text


@check("gpu-fabric", title="NVSwitch fabric registered (HGX/DGX systems)", section=SECTION, needs=NEEDS)
def gpu_fabric(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    if (skip := _no_gpus(facts)) is not None:
        return skip
    gpus = [g for g in _queryable(facts) if g.fabric_state not in (None, "not-supported")]
    if not gpus:
        return Outcome.skip(
            "no NVSwitch fabric on this system (PCIe card, or NVML has no fabric state): nothing to register"
        )
    evidence = [
        Evidence(
            f"gpu[{g.index}].fabric",
            {
                "state": g.fabric_state,
                "status": g.fabric_status,
                "clique_id": g.fabric_clique_id,
                "cluster_uuid_zero": g.fabric_cluster_uuid_zero,
            },
            "nvml",
            HOW_FABRIC,
        )
        for g in gpus
    ]
    start_fm = Fix(
        "Start the NVIDIA fabric manager (same version as the driver) or ask the provider to; open a ticket "
        "if it will not start",
        (
            "systemctl status nvidia-fabricmanager",
            "sudo systemctl restart nvidia-fabricmanager",
            "journalctl -u nvidia-fabricmanager | tail",
        ),
    )
    errored = [g for g in gpus if g.fabric_state == "completed" and g.fabric_status not in (None, "Success")]
    if errored:
        g = errored[0]
        return Outcome.fail(
            f"{_label(g)} fabric registration completed with an error ({g.fabric_status}): "
            "NVLink traffic through the NVSwitches will fail",
            evidence,
            start_fm,
        )
    waiting = [g for g in gpus if g.fabric_state in ("not-started", "in-progress")]
    if not waiting:
        return Outcome.ok(f"fabric registration completed on {len(gpus)} GPU(s)", evidence)
    states = ", ".join(sorted({str(g.fabric_state) for g in waiting}))
    summary = (
        f"NVSwitch fabric {states} on {len(waiting)} GPU(s): the fabric manager has not finished "
        "registering them"
    )
    works = _cuda_works(ctx)
    if works and not _cuda_error_802(ctx):
        # CUDA initialised and computed: the missing fabric only costs NVLink peer traffic.
        if len(facts.gpus) == 1:
            return Outcome.ok(
                summary + "; CUDA works on this single GPU, which needs no NVLink peer", evidence
            )
        return Outcome.warn(
            summary + "; CUDA starts, but NVLink peer-to-peer traffic will fail or fall back",
            evidence,
            start_fm,
        )
    if all(g.fabric_state == "in-progress" for g in waiting) and not _cuda_error_802(ctx):
        return Outcome.warn(
            summary + "; CUDA fails with error 802 until it completes — wait a minute and rerun",
            evidence,
            start_fm,
        )
    return Outcome.fail(
        summary + '; CUDA fails with error 802 ("system not yet initialized") even though '
        "nvidia-smi lists the GPUs",
        evidence,
        start_fm,
    )


# ---------------------------------------------------------------- persistence mode


@check("gpu-persistence-mode", title="Persistence mode", section=SECTION, needs=NEEDS)
def gpu_persistence_mode(ctx: DoctorContext) -> Outcome:
    facts = _health(ctx)
    if (skip := _no_gpus(facts)) is not None:
        return skip
    gpus = _queryable(facts)
    evidence = [
        Evidence(f"gpu[{g.index}].persistence_mode", g.persistence_mode, "nvml", HOW_PERSISTENCE)
        for g in gpus
    ]
    known = [g for g in gpus if g.persistence_mode is not None]
    if not known:
        return Outcome.skip(
            f"NVML reports no persistence mode ({_why_missing(gpus, 'persistence_mode')})", evidence
        )
    off = [g for g in known if not g.persistence_mode]
    if off:
        # Not a fault: the first CUDA start after idle re-initialises the GPU (~1-2 s) and non-persistent
        # settings reset; many container hosts keep the driver loaded with nvidia-persistenced instead.
        return Outcome.ok(
            f"off on {', '.join(_label(g) for g in off)}: each CUDA start after the GPU went idle re-initialises "
            "it (about a second slower); not a fault",
            evidence,
            fix=Fix("Optional: turn persistence on (root)", ("sudo nvidia-smi -pm 1",)),
        )
    return Outcome.ok(f"on for {len(known)} GPU(s)", evidence)


# ---------------------------------------------------------------- known-answer GEMM (live)


def _gemm_line(result: GemmResult) -> str:
    if result.hung:
        return f"cuda:{result.index} did not finish within {result.timeout_s:g} s (hung)"
    if result.error:
        return f"cuda:{result.index} raised {result.error.splitlines()[0][:200]}"
    return f"cuda:{result.index} computed a wrong result (max abs error {result.max_abs_error:g}, expected 0)"


@check(
    "gpu-known-answer",
    title="Each GPU computes a small GEMM with a known answer (live)",
    section=SECTION,
    needs=(TORCH_LIVE,),
)
def gpu_known_answer(ctx: DoctorContext) -> Outcome:
    live = ctx.needed(TORCH_LIVE)
    if not live.cuda_available:
        return Outcome.skip("torch cannot use CUDA here (see torch-cuda-available), so no GPU was exercised")
    if not live.gemm:
        return Outcome.skip("the torch probe ran no known-answer GEMM")
    evidence = [
        Evidence(
            f"cuda:{r.index}.gemm",
            {
                "ok": r.ok,
                "max_abs_error": r.max_abs_error,
                "seconds": r.seconds,
                "error": r.error,
                "hung": r.hung,
            },
            "torch (child)",
            HOW_GEMM,
        )
        for r in live.gemm
    ]
    bad = [r for r in live.gemm if not r.ok]
    if bad:
        hung = any(r.hung for r in bad)
        wrong = any(r.error is None and not r.hung for r in bad)
        fix = REBOOT if hung else (TICKET if wrong else RESET)
        return Outcome.fail(
            "; ".join(_gemm_line(r) for r in bad) + " — a GPU that computes wrong or hangs ruins the run",
            evidence,
            fix,
        )
    slowest = max((r.seconds or 0.0) for r in live.gemm)
    return Outcome.ok(
        f"exact fp32 and bf16 GEMM results on {len(live.gemm)} GPU(s) (slowest {slowest * 1000:.0f} ms)",
        evidence,
    )


# ---------------------------------------------------------------- --deep: copy bandwidth and real P2P


# Per-lane, per-direction PCIe payload rate in GB/s after line encoding (Gen3+ use 128b/130b).
PCIE_LANE_GB_S = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
# Pinned 256 MiB copies reach ~80-90 % of the link on a healthy host (H100 Gen5 x16: ~55 of 63 GB/s);
# below half, something is wrong: a degraded link, the far NUMA node, or an IOMMU in the way.
MIN_LINK_FRACTION = 0.5
HOW_DEEP = "python -m doctor --live --deep --only gpu-host-bandwidth,gpu-p2p -v"


def _deep(ctx: DoctorContext) -> tuple[TorchLive | None, Outcome | None]:
    live = ctx.needed(TORCH_LIVE)
    if not ctx.target.deep:
        return None, Outcome.skip("not measured: run with --deep (a few seconds per GPU)")
    if not live.cuda_available:
        return None, Outcome.skip("torch cannot use CUDA here (see torch-cuda-available)")
    if live.deep is None:
        return None, Outcome.skip("the torch probe ran no deep probes (its GPU GEMM failed or hung first)")
    return live, None


def _expected_gb_s(ctx: DoctorContext) -> tuple[float | None, str]:
    facts = ctx.probe(GPU_HEALTH)
    if not isinstance(facts, GpuHealthFacts):
        return None, ""
    links = [(g.pcie_gen_max, g.pcie_width_max) for g in facts.gpus if g.pcie_gen_max and g.pcie_width_max]
    if not links:
        return None, ""
    gen, width = max(set(links), key=links.count)
    rate = PCIE_LANE_GB_S.get(gen)
    return (rate * width if rate else None), f"PCIe Gen{gen} x{width}"


@check(
    "gpu-host-bandwidth",
    title="Pinned host↔GPU copy bandwidth vs the link (--deep)",
    section=SECTION,
    needs=(TORCH_LIVE,),
)
def gpu_host_bandwidth(ctx: DoctorContext) -> Outcome:
    live, skip = _deep(ctx)
    if skip is not None or live is None or live.deep is None:
        return skip or Outcome.skip("no deep probes")
    deep = live.deep
    evidence = [
        Evidence(
            f"cuda:{b.index}.copy_gb_s",
            {"h2d": b.h2d_gb_s, "d2h": b.d2h_gb_s, "error": b.error},
            "torch (child)",
            HOW_DEEP,
        )
        for b in deep.bandwidth
    ]
    if deep.hung:
        return Outcome.fail(
            f"the copy probes did not finish within {deep.timeout_s:g} s (hung)", evidence, REBOOT
        )
    broken = [b for b in deep.bandwidth if b.error]
    if broken:
        return Outcome.fail(
            f"cuda:{broken[0].index} pinned copy raised {broken[0].error}",
            evidence,
            reset_fix(broken[0].index),
        )
    link_gb_s, link = _expected_gb_s(ctx)
    lines = [f"cuda:{b.index} {b.h2d_gb_s:g}/{b.d2h_gb_s:g} GB/s" for b in deep.bandwidth]
    if link_gb_s is None:
        return Outcome.ok(
            "host→GPU/GPU→host: " + ", ".join(lines) + " (no PCIe link to compare with)", evidence
        )
    floor = round(link_gb_s * MIN_LINK_FRACTION, 1)
    evidence.append(Evidence("pcie.link_gb_s_per_direction", round(link_gb_s, 1), "nvml", HOW_PCIE))
    slow = [b for b in deep.bandwidth if min(b.h2d_gb_s or 0.0, b.d2h_gb_s or 0.0) < floor]
    if slow:
        return Outcome.warn(
            f"{', '.join(lines)}: below {floor:g} GB/s, half of what {link} carries — loading weights and CPU "
            "offload will be slow",
            evidence,
            Fix(
                "Rerun bound to the GPU's NUMA node (the NUMA Affinity column of `nvidia-smi topo -m`; "
                f"numactl --cpunodebind=N --membind=N {HOW_DEEP}); if it stays low, open a support ticket "
                "(link, riser, IOMMU)",
                ("nvidia-smi topo -m",),
            ),
        )
    return Outcome.ok(f"host→GPU/GPU→host {', '.join(lines)} (≥ {floor:g} GB/s expected on {link})", evidence)


@check(
    "gpu-p2p",
    title="Real GPU-to-GPU copies arrive intact (--deep, 2+ GPUs)",
    section=SECTION,
    needs=(TORCH_LIVE,),
)
def gpu_p2p(ctx: DoctorContext) -> Outcome:
    live, skip = _deep(ctx)
    if skip is not None or live is None or live.deep is None:
        return skip or Outcome.skip("no deep probes")
    deep = live.deep
    if live.device_count < 2:
        return Outcome.skip(f"{live.device_count} visible GPU: no peer to copy to")
    evidence = [
        Evidence(
            f"p2p.cuda:{p.src}->cuda:{p.dst}",
            {"can_access_peer": p.can_access_peer, "ok": p.ok, "gb_s": p.gb_s, "error": p.error},
            "torch (child)",
            HOW_DEEP,
        )
        for p in deep.peer
    ]
    fix = Fix(
        "Run with peer-to-peer off (NCCL_P2P_DISABLE=1) and open a support ticket (ACS/IOMMU settings)",
        ("export NCCL_P2P_DISABLE=1", "nvidia-smi topo -m"),
    )
    if deep.hung:
        return Outcome.fail(
            f"GPU-to-GPU copies did not finish within {deep.timeout_s:g} s (hung)", evidence, fix
        )
    bad = [p for p in deep.peer if not p.ok]
    if bad:
        p = bad[0]
        claim = " although can_device_access_peer says yes" if p.can_access_peer else ""
        return Outcome.fail(f"cuda:{p.src}→cuda:{p.dst}: {p.error}{claim}", evidence, fix)
    speeds = ", ".join(f"{p.src}→{p.dst} {p.gb_s:g} GB/s" for p in deep.peer)
    return Outcome.ok(f"{len(deep.peer)} GPU-to-GPU copies arrived intact ({speeds})", evidence)
