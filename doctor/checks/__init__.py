"""Check modules in report order. One concern per module; each check is one small function."""

CHECK_MODULES: tuple[str, ...] = (
    "doctor.checks.platform",
    "doctor.checks.gpu",
    "doctor.checks.gpu_health",
    "doctor.checks.torch_cuda",
    "doctor.checks.bitsandbytes",
    "doctor.checks.libraries",
    "doctor.checks.import_shadowing",
    "doctor.checks.triton",
    "doctor.checks.model_source",
    "doctor.checks.config_load",
    "doctor.checks.git_freshness",
    "doctor.checks.run_args",
    "doctor.checks.memory",
    "doctor.checks.plan_limits",
    "doctor.checks.server",
)
