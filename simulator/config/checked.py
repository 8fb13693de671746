"""Configuration stage: a profile's end-to-end check, how its predictions compared with published runs as
`moesim validate CASES` last reported them (engine profiles and hardware profiles record them alike)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simulator.config.errors import StrictModel

#: What a check's `models` says of the model a result is for (a scenario's model.is_moe).
MODEL_CLASS = {True: "moe", False: "dense"}

#: How outputs name a check's model class ("" for a check of every case of its file).
MODEL_CLASS_NAME = {"all": "", "dense": "dense", "moe": "MoE"}


class CheckedSpec(StrictModel):
    """The rows of a case file that a profile priced (the measured figures; errors |predicted / measured - 1|),
    as `moesim validate` last reported them. `moesim validate` says whether a run still gives these figures."""

    cases: str = Field(min_length=1, description="the case file, relative to the repository")
    models: Literal["all", "dense", "moe"] = Field(
        default="all",
        description="which of the file's cases the rows are: all, or those of dense or of MoE models (a result for "
        "a model of the other class does not repeat this check)",
    )
    rows: int = Field(ge=1, description="the measured figures of its cases that the profile priced")
    median_abs_error: float = Field(ge=0, description="median |predicted / measured - 1| over those rows")
    max_abs_error: float = Field(ge=0, description="the largest |predicted / measured - 1| over those rows")
    source: str = Field(min_length=1, description="when and where the figures were measured")

    @model_validator(mode="after")
    def _ordered(self) -> CheckedSpec:
        if self.max_abs_error < self.median_abs_error:
            raise ValueError("checked: max_abs_error must be at least median_abs_error")
        return self

    def text(self) -> str:
        """'54 published figures (FILE): median |error| 4.3 %, largest 15.7 %'; '... figures of MoE models (FILE) ...'
        for a check of one model class."""
        of = f" of {MODEL_CLASS_NAME[self.models]} models" if self.models != "all" else ""
        return (
            f"{self.rows} published figures{of} ({self.cases}): median |error| {100 * self.median_abs_error:.1f} %, "
            f"largest {100 * self.max_abs_error:.1f} %"
        )

    def covers(self, moe: bool | None) -> bool:
        """Whether this check speaks for a result on a model of that class (None: any class)."""
        return moe is None or self.models in ("all", MODEL_CLASS[moe])


def checks_for(checks: tuple[CheckedSpec, ...], moe: bool | None) -> tuple[CheckedSpec, ...]:
    """The checks that speak for a result on a dense (moe False) or MoE (True) model; all of them for None."""
    return tuple(c for c in checks if c.covers(moe))
