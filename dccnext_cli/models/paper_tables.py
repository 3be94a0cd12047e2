"""The paper's ablation tables (5 and 6) as model options, each row counted beside the paper's figures.

Every row is B1 (the paper's ablation model, trained 150 epochs on ImageNet) with a few `DCCNeXtConfig`
options changed; `recipes/ablation/` holds one training recipe per row with the same options, and a test
keeps the two in step. Paper figures we do not have are None and print as "-": we never invent them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import PAPER_TABLE1
from .flops import FlopReport, count_variant

__all__ = ["PaperRow", "CountedRow", "TABLE5", "TABLE6", "PAPER_TABLES", "ABLATION_VARIANT", "HIGH_RES",
           "count_paper_table"]

ABLATION_VARIANT = "b1"
HIGH_RES = (1280, 800)  # the detection input size, where Table 6 also reports FLOPs


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: its label, the model options that build it, the paper's figures (or None)."""

    label: str
    recipe: str  # the training recipe under recipes/ablation/
    changes: dict[str, Any] = field(default_factory=dict)
    paper_params_m: float | None = None
    paper_gflops: float | None = None  # at 224
    paper_gflops_high_res: float | None = None  # at 1280x800


_B1_PARAMS, _B1_GFLOPS = PAPER_TABLE1[ABLATION_VARIANT]

# Table 5: the cluster size K of both DCC stages (d = 8), and the chosen 12 / 18.
TABLE5 = (
    PaperRow("K = 4", "ablation/table5-k4", {"cluster_sizes": (4, 4)}),
    PaperRow("K = 8", "ablation/table5-k8", {"cluster_sizes": (8, 8)}),
    PaperRow("K = 12", "ablation/table5-k12", {"cluster_sizes": (12, 12)}),
    PaperRow("K = 16", "ablation/table5-k16", {"cluster_sizes": (16, 16)}),
    PaperRow("K = 12 / 18 (B1)", "ablation/table5-k12-18", {}, _B1_PARAMS, _B1_GFLOPS),
)

# Table 6: DCCNeXt built up from a mixer without a spatial op. Rows 1-2 carry the paper's figures as the issue
# that introduced them quotes the paper; rows 3-4 are our reading of the remaining steps (the ConvFFN, then the
# sub-vector interval d = 8), the last being B1 itself (Table 1's figures).
TABLE6 = (
    PaperRow("DCCConv -> None", "ablation/table6-none",
             {"global_op": "none", "conv_ffn": False}, 11.2, 1.52, 31.0),
    PaperRow("+DCConv, d = 1", "ablation/table6-dcconv",
             {"conv_ffn": False, "subvector_intervals": (1, 1)}, 11.3, 1.65, 78.9),
    PaperRow("+ConvFFN, d = 1", "ablation/table6-convffn", {"subvector_intervals": (1, 1)}),
    PaperRow("+sub-vectors d = 8 (B1)", "ablation/table6-subvectors", {}, _B1_PARAMS, _B1_GFLOPS),
)

PAPER_TABLES = {"table5": TABLE5, "table6": TABLE6}


@dataclass
class CountedRow:
    """A paper row with our counts at 224 (and at 1280x800 when asked)."""

    row: PaperRow
    report: FlopReport
    high_res: FlopReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.row.label,
            "recipe": self.row.recipe,
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in self.row.changes.items()},
            "params": self.report.params,
            "flops": self.report.flops_per_image,
            "flops_1280x800": self.high_res.flops_per_image if self.high_res else None,
            "paper": {"params_m": self.row.paper_params_m, "flops_g": self.row.paper_gflops,
                      "flops_1280x800_g": self.row.paper_gflops_high_res},
        }


def count_paper_table(rows: tuple[PaperRow, ...], high_res: bool = False) -> list[CountedRow]:
    """Our parameters and FLOPs for every row, built from its options on the meta device."""
    return [
        CountedRow(row, count_variant(ABLATION_VARIANT, (224, 224), **row.changes),
                   count_variant(ABLATION_VARIANT, HIGH_RES, **row.changes) if high_res else None)
        for row in rows
    ]
