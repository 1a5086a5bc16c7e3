"""Probe snapshots of real machines, for `DoctorContext.from_snapshot`.

Each scenario is the facts the static and live probes would have gathered on that machine; the
checks cannot tell them from the real thing. Names follow the cases in
the failure modes in docs/checks.md and the user's own story (GH200 + CPU-only torch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from doctor.model_config import ModelResolution
from doctor.probes import Unavailable
from doctor.probes.bnb_live import BnbLive, BnbRoundTrip
from doctor.probes.host import HostFacts
from doctor.probes.libs_static import BnbFiles, NativeLib, TorchBuild, TritonDist
from doctor.probes.live_batch import NOT_LIVE_REASON
from doctor.probes.nvml import NO_GPU_REASON, GpuFacts, GpuProcess, NvmlFacts
from doctor.probes.nvml_health import DriverStack, GpuHealth, GpuHealthFacts, XidEvent, XidLog
from doctor.probes.packages import DistInfo, PackageVersions
from doctor.probes.torch_live import GemmResult, TorchDevice, TorchLive
from doctor.probes.transformers_live import TransformersLive
from doctor.probes.triton_live import TritonLive
from run_plan.spec import RunSpec

GIB = 1 << 30
SCOUT = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
H100_ARCHES = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
BNB_CUDA = ("118", "121", "124", "126", "128", "130")
TRITON_PIN = 'triton==3.3.0; platform_system == "Linux" and platform_machine == "x86_64"'


@dataclass(frozen=True)
class Scenario:
    name: str
    target: RunSpec
    snapshot: dict[str, Any]

    def with_target(self, **changes: Any) -> Scenario:
        return replace(self, target=replace(self.target, **changes))

    def with_facts(self, **facts: Any) -> Scenario:
        """Replace probe facts; keyword names use '_' for '-' (torch_live -> "torch-live")."""
        return replace(self, snapshot={**self.snapshot, **{k.replace("_", "-"): v for k, v in facts.items()}})


# ---------------------------------------------------------------- building blocks


def host(machine: str = "x86_64") -> HostFacts:
    return HostFacts(
        machine=machine,
        system="Linux",
        os_release="6.8.0",
        libc="glibc 2.35",
        python_version="3.11.9",
        python_executable="/venv/bin/python",
        virtualenv="/venv",
        ram_total_bytes=512 * GIB,
        ram_available_bytes=480 * GIB,
        cgroup_memory_limit_bytes=None,
        cpu_count=64,
        hf_cache_dir="/data/hf/hub",
        hf_cache_free_bytes=2000 * GIB,
    )


def no_nvml() -> NvmlFacts:
    return NvmlFacts(False, f"{NO_GPU_REASON} (NVML: NVML Shared Library Not Found)")


def gpu(
    name: str = "NVIDIA H100 80GB HBM3",
    total_gib: float = 79.6,
    cc: tuple[int, int] = (9, 0),
    index: int = 0,
    used_gib: float = 0.5,
    processes: tuple[GpuProcess, ...] = (),
    mig: bool | None = False,
) -> GpuFacts:
    total = int(total_gib * GIB)
    used = int(used_gib * GIB)
    return GpuFacts(
        index=index,
        name=name,
        memory_total_bytes=total,
        memory_free_bytes=total - used,
        memory_used_bytes=used,
        compute_capability=cc,
        mig_enabled=mig,
        processes=processes,
        pci_bus_id=f"00000000:{index + 0x18:02X}:00.0",
    )


def nvml(
    *gpus: GpuFacts,
    driver: str = "570.124.06",
    cuda: tuple[int, int] = (12, 8),
    cvd: str | None = None,
    visible: int | None = None,
) -> NvmlFacts:
    return NvmlFacts(
        True,
        "",
        driver_version=driver,
        cuda_driver_version=cuda,
        gpus=gpus,
        cuda_visible_devices=cvd,
        visible_gpu_count=len(gpus) if visible is None else visible,
    )


def dist(name: str, version: str, tag: str) -> DistInfo:
    return DistInfo(
        name=name,
        version=version,
        location="/venv/lib/python3.11/site-packages",
        installer="pip",
        wheel_tags=(tag,),
        direct_url=None,
    )


def torch_cuda_build(version: str = "2.7.0+cu126", cuda: str = "12.6", machine: str = "x86_64") -> TorchBuild:
    local = version.partition("+")[2]
    return TorchBuild(
        installed=True,
        version=version,
        build="cuda",
        cuda=cuda,
        has_libtorch_cuda=True,
        local_tag=f"+{local}" if local else None,
        provenance=f"the download.pytorch.org {local} index" if local else "PyPI",
        dist=dist("torch", version, f"cp311-cp311-manylinux_2_28_{machine}"),
        machine=machine,
    )


def torch_cpu_build(version: str = "2.7.0", machine: str = "aarch64", provenance: str = "PyPI") -> TorchBuild:
    return TorchBuild(
        installed=True,
        version=version,
        build="cpu",
        cuda=None,
        has_libtorch_cuda=False,
        local_tag="+cpu" if version.endswith("+cpu") else None,
        provenance=provenance,
        dist=dist("torch", version, f"cp311-cp311-manylinux_2_28_{machine}"),
        machine=machine,
    )


def bnb_files(
    version: str = "0.50.2",
    machine: str = "x86_64",
    lib_machine: str | None = None,
    cuda: tuple[str, ...] = BNB_CUDA,
    override: str | None = None,
) -> BnbFiles:
    arch = lib_machine or machine
    libs = (
        NativeLib("libbitsandbytes_cpu.so", arch),
        *(NativeLib(f"libbitsandbytes_cuda{v}.so", arch) for v in cuda),
    )
    return BnbFiles(
        installed=True,
        version=version,
        machine=machine,
        libs=libs,
        cuda_versions=tuple(f"{int(v[:2])}.{int(v[2:])}" for v in cuda),
        has_cpu_lib=True,
        cuda_version_override=override,
        dist=dist("bitsandbytes", version, f"py3-none-manylinux_2_24_{arch}"),
    )


def triton_dist(
    version: str | None = "3.3.0",
    requirement: str | None = TRITON_PIN,
    applies: bool | None = True,
    satisfied: bool | None = True,
    machine: str = "x86_64",
) -> TritonDist:
    return TritonDist(
        installed=version is not None,
        dist_name="triton" if version else None,
        version=version,
        torch_requirement=requirement,
        requirement_applies=applies if requirement else None,
        requirement_satisfied=satisfied if requirement else None,
        machine=machine,
    )


def packages(
    transformers: str | None = "4.52.4", accelerate: str | None = "1.7.0", **more: str | None
) -> PackageVersions:
    versions = {
        "torch": "2.7.0+cu126",
        "bitsandbytes": "0.50.2",
        "triton": "3.3.0",
        "pytorch-triton": None,
        "transformers": transformers,
        "accelerate": accelerate,
        **more,
    }
    return PackageVersions(versions=versions, nvidia_runtime={"nvidia-cuda-runtime-cu12": "12.6.77"})


def torch_live_ok(
    version: str = "2.7.0+cu126",
    cuda: str = "12.6",
    name: str = "NVIDIA H100 80GB HBM3",
    cc: tuple[int, int] = (9, 0),
    arches: tuple[str, ...] = H100_ARCHES,
    warnings: tuple[str, ...] = (),
) -> TorchLive:
    return TorchLive(
        version=version,
        cuda=cuda,
        cuda_built=True,
        cuda_available=True,
        device_count=1,
        devices=(TorchDevice(0, name, cc, int(78.5 * GIB), int(79.1 * GIB)),),
        arch_list=arches,
        warnings=warnings,
        import_seconds=1.9,
        gemm=(GemmResult(0, True, 0.0, 0.012),),
    )


def bnb_live_cuda(version: str = "0.50.2", lib: str = "libbitsandbytes_cuda126.so") -> BnbLive:
    return BnbLive(
        version=version,
        library_class="CudaBNBNativeLibrary",
        library_kind="cuda",
        library_path=f"/venv/lib/python3.11/site-packages/bitsandbytes/{lib}",
        backend="CUDA",
        torch_cuda="12.6",
        torch_cuda_available=True,
        roundtrip=BnbRoundTrip("cuda", "nf4", 0.0921, 0.0934, None, 0.41),
    )


def triton_live_ok() -> TritonLive:
    return TritonLive(
        version="3.3.0", torch_has_triton=True, kernel_ran=True, kernel_max_abs_error=0.0, kernel_seconds=1.3
    )


def not_live() -> Unavailable:
    return Unavailable(NOT_LIVE_REASON, "not-applicable")


def no_model() -> Unavailable:
    return Unavailable("no --model given; model support in transformers not checked", "not-applicable")


def llama4_resolution() -> ModelResolution:
    return ModelResolution(
        requested=SCOUT,
        status="found",
        message="HF cache snapshot",
        resolved_id=SCOUT,
        source="hf-cache",
        config={
            "model_type": "llama4",
            "architectures": ["Llama4ForConditionalGeneration"],
            "transformers_version": "4.51.0.dev0",
        },
        model_type="llama4",
        architectures=("Llama4ForConditionalGeneration",),
        config_transformers_version="4.51.0.dev0",
    )


def health(
    index: int = 0,
    name: str = "NVIDIA H100 80GB HBM3",
    sxm: bool = True,
    **changes: Any,
) -> GpuHealth:
    """A healthy data-centre GPU as NVML reports it; `sxm=False` is a PCIe card (no NVSwitch fabric)."""
    base = GpuHealth(
        index=index,
        name=name,
        pci_bus_id=f"00000000:{index + 0x18:02X}:00.0",
        ecc_enabled=True,
        ecc_volatile_uncorrected=0,
        ecc_volatile_corrected=0,
        ecc_aggregate_uncorrected=0,
        ecc_aggregate_corrected=3,
        remapped_rows_correctable=0,
        remapped_rows_uncorrectable=0,
        remap_pending=False,
        remap_failed=False,
        clock_event_reasons=0x1,  # gpu_idle
        temperature_c=31,
        utilization_gpu_percent=0,
        pcie_gen_current=5,
        pcie_gen_max=5,
        pcie_gen_gpu_max=5,
        pcie_width_current=16,
        pcie_width_max=16,
        fabric_state="completed" if sxm else "not-supported",
        fabric_status="Success" if sxm else None,
        fabric_cluster_uuid_zero=False if sxm else None,
        fabric_clique_id=1 if sxm else None,
        persistence_mode=True,
    )
    return replace(base, **changes)


def driver_stack(driver: str = "570.124.06", library: str | None = None, **changes: Any) -> DriverStack:
    lib = library or driver
    base = DriverStack(
        kernel_module_version=driver,
        nvml_driver_version=driver,
        nvml_library_version=f"12.{lib}",
        nvml_library_path=f"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{lib}",
    )
    return replace(base, **changes)


def xid(code: int, text: str, index: int = 0, at: float = 5321.4) -> XidEvent:
    return XidEvent(
        code=code, pci=f"0000:{index + 0x18:02x}:00", gpu_index=index, seconds_since_boot=at, text=text
    )


def gpu_health(
    *gpus: GpuHealth, driver: str = "570.124.06", xids: tuple[XidEvent, ...] = (), readable: bool = True
) -> GpuHealthFacts:
    log = (
        XidLog(True, "", "/dev/kmsg", xids)
        if readable
        else XidLog(
            False,
            "/dev/kmsg is not readable (Operation not permitted); containers usually hide the kernel log",
        )
    )
    return GpuHealthFacts(driver_stack(driver), gpus or (health(),), log)


# ---------------------------------------------------------------- named scenarios


def healthy_h100(cuda: str = "12.6", driver_cuda: tuple[int, int] = (12, 8)) -> Scenario:
    """One H100, driver new enough, torch cu12x/cu13x, bnb with CUDA libs, triton matching torch's pin."""
    version = f"2.7.0+cu{cuda.replace('.', '')}"
    return Scenario(
        "healthy-h100",
        RunSpec(quant="bnb-4bit", attn="sdpa"),
        {
            "host": host(),
            "nvml": nvml(
                gpu(), cuda=driver_cuda, driver="570.124.06" if driver_cuda < (13, 0) else "580.65.06"
            ),
            "gpu-health": gpu_health(driver="570.124.06" if driver_cuda < (13, 0) else "580.65.06"),
            "packages": packages(),
            "torch-build": torch_cuda_build(version, cuda),
            "bnb-files": bnb_files(),
            "triton-dist": triton_dist(),
            "torch-live": torch_live_ok(version, cuda),
            "bnb-live": bnb_live_cuda(lib=f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"),
            "triton-live": triton_live_ok(),
            "transformers-live": no_model(),
        },
    )


def no_gpu() -> Scenario:
    """A CPU-only dev box (like CI): torch +cpu, no driver; `doctor` alone must not FAIL."""
    return Scenario(
        "no-gpu",
        RunSpec(),
        {
            "host": host(),
            "nvml": no_nvml(),
            "gpu-health": GpuHealthFacts(
                DriverStack(None, None, None, None, "NVML Shared Library Not Found", "library-not-found"),
                (),
                XidLog(False, "no NVIDIA driver installed"),
            ),
            "packages": packages(torch="2.13.0+cpu"),
            "torch-build": torch_cpu_build("2.13.0+cpu", "x86_64", "the download.pytorch.org CPU index"),
            "bnb-files": bnb_files(),
            "triton-dist": triton_dist("3.9.0", requirement=None),
            "torch-live": not_live(),
            "bnb-live": not_live(),
            "triton-live": not_live(),
            "transformers-live": no_model(),
        },
    )


def gh200_cpu_torch() -> Scenario:
    """The user's story (F1): `pip install torch` on a GH200 gave PyPI's CPU-only aarch64 wheel."""
    gh200 = gpu("NVIDIA GH200 480GB", total_gib=95.0, cc=(9, 0))
    torch_live = TorchLive(
        version="2.7.0",
        cuda=None,
        cuda_built=False,
        cuda_available=False,
        init_error="AssertionError: Torch not compiled with CUDA enabled",
        import_seconds=3.1,
    )
    bnb_live = BnbLive(
        version="0.50.2",
        library_class="BNBNativeLibrary",
        library_kind="cpu",
        library_path="/venv/lib/python3.11/site-packages/bitsandbytes/libbitsandbytes_cpu.so",
        backend="CPU",
        torch_cuda=None,
        torch_cuda_available=False,
    )
    return Scenario(
        "gh200-cpu-torch",
        RunSpec(quant="bnb-4bit", model=SCOUT, context=131072),
        {
            "host": host("aarch64"),
            "nvml": nvml(gh200, driver="570.124.06", cuda=(12, 8)),
            "packages": packages(torch="2.7.0", triton=None),
            "torch-build": torch_cpu_build("2.7.0", "aarch64"),
            "bnb-files": bnb_files(machine="aarch64"),
            "triton-dist": triton_dist(None, requirement=None, machine="aarch64"),
            "torch-live": torch_live,
            "bnb-live": bnb_live,
            "triton-live": Unavailable("triton is not installed", "missing"),
            "transformers-live": TransformersLive(
                version="4.52.4",
                model_type="llama4",
                model_type_known=True,
                architectures=("Llama4ForConditionalGeneration",),
                config_transformers_version="4.51.0.dev0",
            ),
            "model": llama4_resolution(),
        },
    )


def driver_too_old() -> Scenario:
    """F4: torch cu126 on a driver that only speaks CUDA 11.8."""
    message = (
        "The NVIDIA driver on your system is too old (found version 11080). Please update your GPU driver by "
        "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx"
    )
    torch_live = TorchLive(
        version="2.7.0+cu126",
        cuda="12.6",
        cuda_built=True,
        cuda_available=False,
        init_error=f"RuntimeError: {message}",
        warnings=(f"CUDA initialization: {message}",),
        arch_list=H100_ARCHES,
    )
    base = healthy_h100()
    return replace(base, name="driver-too-old").with_facts(
        nvml=nvml(gpu(), driver="520.61.05", cuda=(11, 8)),
        torch_live=torch_live,
        bnb_live=replace(
            bnb_live_cuda(),
            library_class="BNBNativeLibrary",
            library_kind="cpu",
            backend="CPU",
            library_path=".../libbitsandbytes_cpu.so",
            torch_cuda_available=False,
            roundtrip=None,
        ),
        triton_live=TritonLive(version="3.3.0", torch_has_triton=False, kernel_ran=None),
    )


def bnb_cpu_library() -> Scenario:
    """F5: torch sees the H100, but this bitsandbytes (a CPU-only source build) has no CUDA library."""
    base = healthy_h100()
    files = replace(bnb_files("0.45.0", cuda=()), dist=dist("bitsandbytes", "0.45.0", "py3-none-any"))
    live = BnbLive(
        version="0.45.0",
        library_class="BNBNativeLibrary",
        library_kind="cpu",
        library_path="/venv/lib/python3.11/site-packages/bitsandbytes/libbitsandbytes_cpu.so",
        backend="CUDA",
        torch_cuda="12.6",
        torch_cuda_available=True,
        log_messages=(
            (
                "WARNING: The installed version of bitsandbytes was compiled without GPU support. "
                "8-bit optimizers, 8-bit multiplication, and GPU quantization are unavailable."
            ),
        ),
        roundtrip=BnbRoundTrip(
            "cuda",
            "nf4",
            error="RuntimeError: Method 'cquantize_blockwise_bf16_nf4' "
            "not available in CPU-only version of bitsandbytes.",
        ),
    )
    return replace(base, name="bnb-cpu-library").with_facts(
        bnb_files=files, bnb_live=live, packages=packages(bitsandbytes="0.45.0")
    )


def transformers_450_llama4() -> Scenario:
    """F8: Llama 4 config on transformers 4.50.3 (llama4 arrived in 4.51.0)."""
    base = healthy_h100().with_target(model=SCOUT, context=131072)
    live = TransformersLive(
        version="4.50.3",
        model_type="llama4",
        model_type_known=False,
        architectures=("Llama4ForConditionalGeneration",),
        missing_architectures=("Llama4ForConditionalGeneration",),
        config_transformers_version="4.51.0.dev0",
    )
    return replace(base, name="transformers-4.50-llama4").with_facts(
        transformers_live=live, model=llama4_resolution(), packages=packages(transformers="4.50.3")
    )


def triton_missing() -> Scenario:
    """F9: torch pins triton, but triton is not installed, and the run wants flex_attention."""
    base = healthy_h100().with_target(attn="flex_attention")
    return replace(base, name="triton-missing").with_facts(
        triton_dist=triton_dist(None, satisfied=False),
        triton_live=Unavailable("triton is not installed", "missing"),
        packages=packages(triton=None),
    )


# ---------------------------------------------------------------- GPU incidents (the health checks)


def xid79_fallen_off_bus() -> Scenario:
    """Xid 79: the GPU dropped off the PCIe bus; NVML lists it but cannot query it. Only a reboot helps."""
    lost = replace(
        gpu(),
        name="GPU 0 (NVML error: GPU is lost)",
        memory_total_bytes=0,
        memory_free_bytes=0,
        memory_used_bytes=0,
        compute_capability=None,
        mig_enabled=None,
    )
    torch_live = TorchLive(
        version="2.7.0+cu126",
        cuda="12.6",
        cuda_built=True,
        cuda_available=False,
        init_error="RuntimeError: CUDA driver initialization failed, you might not have a CUDA gpu.",
        arch_list=H100_ARCHES,
    )
    return replace(healthy_h100(), name="xid79-fallen-off-bus").with_facts(
        nvml=nvml(lost),
        gpu_health=GpuHealthFacts(
            driver_stack(),
            (GpuHealth(0, "GPU 0", query_error="GPU is lost"),),
            XidLog(True, "", "/dev/kmsg", (xid(79, "pid=2231, GPU has fallen off the bus."),)),
        ),
        torch_live=torch_live,
    )


def xid48_double_bit_ecc() -> Scenario:
    """Xid 48: an uncorrectable (double-bit) ECC error; the row remap it triggers waits for a reset."""
    hurt = health(
        ecc_volatile_uncorrected=1,
        ecc_aggregate_uncorrected=1,
        remapped_rows_uncorrectable=1,
        remap_pending=True,
    )
    return replace(healthy_h100(), name="xid48-double-bit-ecc").with_facts(
        gpu_health=gpu_health(
            hurt,
            xids=(
                xid(
                    48,
                    "An uncorrectable double bit error (DBE) has been detected "
                    "on GPU in the framebuffer at partition 2, subpartition 0.",
                ),
            ),
        ),
    )


def row_remap_pending() -> Scenario:
    """A correctable-error row remap is recorded but takes effect only at the next GPU reset."""
    pending = health(remapped_rows_correctable=1, remap_pending=True)
    return replace(healthy_h100(), name="row-remap-pending").with_facts(gpu_health=gpu_health(pending))


def thermal_slowdown() -> Scenario:
    """A failed fan or blocked airflow: the GPU cuts its clocks (HW + SW thermal slowdown) at 91 °C."""
    hot = health(clock_event_reasons=0x20 | 0x40 | 0x4, temperature_c=91, utilization_gpu_percent=97)
    return replace(healthy_h100(), name="thermal-slowdown").with_facts(gpu_health=gpu_health(hot))


def pcie_x8() -> Scenario:
    """A riser problem: the x16 link trained at x8, so host-to-GPU copies run at half speed."""
    narrow = health(pcie_width_current=8, utilization_gpu_percent=40, clock_event_reasons=0)
    return replace(healthy_h100(), name="pcie-x16-to-x8").with_facts(gpu_health=gpu_health(narrow))


def fabric_manager_not_started() -> Scenario:
    """HGX H100 with nvidia-fabricmanager not running: nvidia-smi lists 8 GPUs, CUDA fails with error 802."""
    gpus = tuple(gpu(index=i) for i in range(8))
    waiting = tuple(
        health(
            i,
            fabric_state="not-started",
            fabric_status="Success",
            fabric_clique_id=0,
            fabric_cluster_uuid_zero=True,
        )
        for i in range(8)
    )
    torch_live = TorchLive(
        version="2.7.0+cu126",
        cuda="12.6",
        cuda_built=True,
        cuda_available=False,
        init_error="RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions "
        "before calling NumCudaDevices() that might have already set an error? Error 802: system "
        "not yet initialized",
        arch_list=H100_ARCHES,
    )
    return replace(healthy_h100(), name="fabric-manager-not-started").with_facts(
        nvml=nvml(*gpus),
        gpu_health=gpu_health(*waiting),
        torch_live=torch_live,
    )


def driver_library_mismatch() -> Scenario:
    """An unattended upgrade replaced the user-space driver (570.133.20) under the loaded module (570.124.06)."""
    message = "RM has detected an NVML/RM version mismatch."
    stack = DriverStack(
        kernel_module_version="570.124.06",
        nvml_driver_version=None,
        nvml_library_version=None,
        nvml_library_path="/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.570.133.20",
        init_error=message,
        init_error_kind="rm-version-mismatch",
    )
    torch_live = TorchLive(
        version="2.7.0+cu126",
        cuda="12.6",
        cuda_built=True,
        cuda_available=False,
        init_error="RuntimeError: Unexpected error from cudaGetDeviceCount(). Error 804: "
        "forward compatibility was attempted on non supported HW",
        arch_list=H100_ARCHES,
    )
    return replace(healthy_h100(), name="driver-library-mismatch").with_facts(
        nvml=NvmlFacts(False, f"{NO_GPU_REASON} (NVML: {message})"),
        gpu_health=GpuHealthFacts(stack, (), XidLog(True, "", "/dev/kmsg", ())),
        torch_live=torch_live,
    )


def tenant_holding_20gib() -> Scenario:
    """Another tenant's process holds 20 GiB of the GPU this run was given."""
    busy = gpu(used_gib=20.6, processes=(GpuProcess(31337, "python3", 20 * GIB),))
    return replace(healthy_h100(), name="tenant-holding-20gib").with_facts(nvml=nvml(busy))


def healthy_h100_pcie() -> Scenario:
    """A PCIe H100 at idle: no NVSwitch fabric (NVML: not supported) and the link idling at Gen1."""
    card = gpu("NVIDIA H100 PCIe", total_gib=79.6)
    idle = health(name="NVIDIA H100 PCIe", sxm=False, pcie_gen_current=1, persistence_mode=False)
    return replace(healthy_h100(), name="healthy-h100-pcie").with_facts(
        nvml=nvml(card),
        gpu_health=gpu_health(idle, readable=False),
        torch_live=torch_live_ok(name=card.name),
    )


SCENARIOS = {
    "no-gpu": no_gpu,
    "gh200-cpu-torch": gh200_cpu_torch,
    "driver-too-old": driver_too_old,
    "bnb-cpu-library": bnb_cpu_library,
    "transformers-4.50-llama4": transformers_450_llama4,
    "triton-missing": triton_missing,
    "healthy-h100": healthy_h100,
    "healthy-h100-pcie": healthy_h100_pcie,
    "xid79-fallen-off-bus": xid79_fallen_off_bus,
    "xid48-double-bit-ecc": xid48_double_bit_ecc,
    "row-remap-pending": row_remap_pending,
    "thermal-slowdown": thermal_slowdown,
    "pcie-x16-to-x8": pcie_x8,
    "fabric-manager-not-started": fabric_manager_not_started,
    "driver-library-mismatch": driver_library_mismatch,
    "tenant-holding-20gib": tenant_holding_20gib,
}
