"""`dccnext benchmark`: speed and memory of DCCNeXt beside any timm model, in timm's benchmark.py columns.

`models` names what is measured, `measure` times and weighs one step, `suite` runs every setting with its
models interleaved, `pipeline` times the input pipeline, `report` writes the rows (CSV, JSON, tables).
"""

from .measure import Setting
from .suite import run_suite

__all__ = ["Setting", "run_suite"]
