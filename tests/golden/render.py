"""Print a saved JSON report as the terminal text report, at the width of the terminal it runs in.

The goldens next to this file were captured from a real terminal with tests/golden/capture.sh
(tmux at 60, 100 and 160 columns); tests/test_render_text.py renders the same reports with COLUMNS set
and compares.
"""

import sys
from pathlib import Path

from doctor.report.load import read_report_json, report_from_json_dict
from doctor.report.render_text import render_text

if __name__ == "__main__":
    report = report_from_json_dict(read_report_json(Path(sys.argv[1])))
    sys.stdout.write(render_text(report, color=False))
