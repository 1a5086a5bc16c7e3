"""The checks: one concern per module, each check one small function (report order: doctor.registry)."""
