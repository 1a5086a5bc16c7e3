"""The report data model (stdlib only) and its three renderers."""

from doctor.report.model import CheckResult, Evidence, Fix, Report, Status, ToolInfo

__all__ = ["CheckResult", "Evidence", "Fix", "Report", "Status", "ToolInfo"]
