"""The report a person looks at (issue: evaluation, interpretation and the report).

- :func:`build_report` — one self-contained HTML page for a run directory: ground truth and
  reconstruction side by side as animated clips, the metrics with chance levels, the ablation
  table, the attention charts and flat maps, and every stage's configuration.
- :func:`write_run_info` / :func:`read_run_info` — the run's provenance (``RUN/run.json``).
- :data:`STAGE_DIRS` — the stage folders of a run directory (docs/report.md).
"""

from mindvideo.report.html import REPORT_FILE, build_report
from mindvideo.report.run_dir import (
    RUN_INFO,
    STAGE_DIRS,
    read_run_info,
    stage_dir,
    write_run_info,
)

__all__ = [
    "REPORT_FILE",
    "RUN_INFO",
    "STAGE_DIRS",
    "build_report",
    "read_run_info",
    "stage_dir",
    "write_run_info",
]
