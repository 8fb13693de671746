"""Configuration stage: a profile's end-to-end check, how its predictions compared with published runs as
`moesim validate CASES` last reported them (engine profiles and hardware profiles record them alike)."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from simulator.config.errors import StrictModel

#: What a check's `models` says of the model a result is for (a scenario's model.is_moe).
MODEL_CLASS = {True: "moe", False: "dense"}

#: How outputs name a check's model class ("" for a check of every case of its file).
MODEL_CLASS_NAME = {"all": "", "dense": "dense", "moe": "MoE"}

#: What a check's `layouts` says of a result's layout (a scenario's experts_across_dp).
LAYOUT_CLASS = {True: "experts_across_dp", False: "other"}

#: How outputs name a check's layout class ("" for a check of every layout).
LAYOUT_CLASS_NAME = {
    "all": "",
    "experts_across_dp": "with attention DP + EP",
    "other": "without attention DP + EP",
}


class ResultClass(NamedTuple):
    """What a profile's checks are matched on (Scenario.result_class): the model's class and whether its
    expert-parallel groups span data-parallel ranks (attention DP + EP, the ranks stepping together)."""

    moe: bool
    experts_across_dp: bool = False


class CheckedSpec(StrictModel):
    """The rows of a case file that a profile priced (the measured figures; errors |predicted / measured - 1|),
    as `moesim validate` last reported them. `moesim validate` says whether a run still gives these figures."""

    cases: str = Field(min_length=1, description="the case file, relative to the repository")
    models: Literal["all", "dense", "moe"] = Field(
        default="all",
        description="which of the file's cases the rows are: all, or those of dense or of MoE models (a result for "
        "a model of the other class does not repeat this check)",
    )
    layouts: Literal["all", "experts_across_dp", "other"] = Field(
        default="all",
        description="which of those cases the rows are by layout: all, those whose expert-parallel groups span "
        "data-parallel ranks (experts_across_dp: attention DP + EP), or the others",
    )
    rows: int = Field(ge=1, description="the measured figures of its cases that the profile priced")
    median_abs_error: float = Field(ge=0, description="median |predicted / measured - 1| over those rows")
    max_abs_error: float = Field(ge=0, description="the largest |predicted / measured - 1| over those rows")
    faster_rows: int | None = Field(
        default=None,
        ge=0,
        description="of those rows, the ones where moesim was faster than measured (more throughput, less "
        "latency): the direction to expect; unset: not recorded",
    )
    source: str = Field(min_length=1, description="when and where the figures were measured")

    @model_validator(mode="after")
    def _ordered(self) -> CheckedSpec:
        if self.max_abs_error < self.median_abs_error:
            raise ValueError("checked: max_abs_error must be at least median_abs_error")
        if self.faster_rows is not None and self.faster_rows > self.rows:
            raise ValueError(f"checked: faster_rows = {self.faster_rows} is more than rows = {self.rows}")
        return self

    def text(self) -> str:
        """'54 published figures (FILE): median |error| 4.3 %, largest 15.7 %, moesim faster than measured in
        30'; '... figures of MoE models with attention DP + EP (FILE) ...' for a check of one class (attention
        DP + EP: expert groups across data-parallel ranks)."""
        of = ""
        if self.models != "all" or self.layouts != "all":
            model = f"{MODEL_CLASS_NAME[self.models]} " if self.models != "all" else ""
            layout = f" {LAYOUT_CLASS_NAME[self.layouts]}" if self.layouts != "all" else ""
            of = f" of {model}models{layout}"
        faster = f", moesim faster than measured in {self.faster_rows}" if self.faster_rows is not None else ""
        return (
            f"{self.rows} published figures{of} ({self.cases}): median |error| "
            f"{100 * self.median_abs_error:.1f} %, largest {100 * self.max_abs_error:.1f} %{faster}"
        )

    def covers(self, result: ResultClass | None) -> bool:
        """Whether this check speaks for a result of that class (None: any)."""
        if result is None:
            return True
        return self.models in ("all", MODEL_CLASS[result.moe]) and self.layouts in (
            "all",
            LAYOUT_CLASS[result.experts_across_dp],
        )


def checks_for(checks: tuple[CheckedSpec, ...], result: ResultClass | None) -> tuple[CheckedSpec, ...]:
    """The checks that speak for a result of that class (model and layout); all of them for None."""
    return tuple(c for c in checks if c.covers(result))
