"""`--format json`: the stable, versioned contract (docs/report-format.md)."""

from __future__ import annotations

import json

from doctor.report.model import Report, report_to_json_dict


def render_json(report: Report) -> str:
    return json.dumps(report_to_json_dict(report), indent=2, ensure_ascii=False) + "\n"
