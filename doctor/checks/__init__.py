"""Check modules in report order. One concern per module; each check is one small function."""

CHECK_MODULES: tuple[str, ...] = (
    "doctor.checks.platform",
    "doctor.checks.gpu", "doctor.checks.torch_cuda", "doctor.checks.bitsandbytes",
    "doctor.checks.libraries", "doctor.checks.triton",
    "doctor.checks.model_source",
    "doctor.checks.git_freshness",
    "doctor.checks.run_args",
    "doctor.checks.memory",
    "doctor.checks.server",
)
