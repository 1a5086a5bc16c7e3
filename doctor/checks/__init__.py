"""Check modules in report order. One concern per module; each check is one small function."""

CHECK_MODULES: tuple[str, ...] = (
    "doctor.checks.platform",
)
