"""Moved: the planned run is `run_plan.spec.RunSpec`. This alias keeps old imports working."""

from run_plan.spec import (  # noqa: F401
    ATTN_CHOICES,
    DTYPE_CHOICES,
    QUANT_CHOICES,
    RunSpec,
    parse_token_count,
)
from run_plan.spec import RunSpec as Target  # noqa: F401
