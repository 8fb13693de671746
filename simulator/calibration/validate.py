"""Calibration stage, validation: predict measured runs and measure moesim's error (`moesim validate CASES.yaml` prints it)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, ValidationError

from simulator.config import ScenarioError, parse_scenario
from simulator.config.errors import one_line_error
from simulator.config.load import resolve_relative_paths
from simulator.files import read_yaml
from simulator.pipeline import run_scenario

Metric = Literal["prefill_s", "decode_step_s", "ttft_mean_s", "tpot_s", "total_s", "output_tokens_per_ms_per_gpu"]


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    source: str = ""
    metric: Metric
    measured: PositiveFloat
    scenario: dict[str, Any]


class CasesFile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # extra keys hold YAML anchors (shared models)
    cases: list[Case]


@dataclass(frozen=True)
class Outcome:
    case: str
    metric: str
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        """Signed relative error of the prediction."""
        return self.predicted / self.measured - 1.0


def read_case_list(path: Path, file_model: type[BaseModel], field: str, give: str) -> list[Any]:
    """The list `field` of a cases file validated as `file_model` (read as every YAML input is: bounded,
    duplicate keys refused); ScenarioError, one line, when the file is missing, invalid or the list empty
    (`give` says what to add)."""
    if not path.is_file():
        raise ScenarioError(f"{path}: no such cases file")
    data = read_yaml(path, str(path), "cases", ScenarioError)
    try:
        cases = getattr(file_model.model_validate(data), field)
    except ValidationError as exc:
        raise ScenarioError(f"{path}: {one_line_error(exc, file_model)}") from None
    if not cases:
        raise ScenarioError(f"{path}: {field}: the list is empty; give {give}")
    return cases


def load_cases(path: Path) -> list[Case]:
    """The cases of a cases file (read_case_list), with relative profile and preset paths taken relative to
    the file; at least one case."""
    path = Path(path)
    cases = read_case_list(path, CasesFile, "cases", "at least one measured case")
    return [case.model_copy(update={"scenario": resolve_relative_paths(case.scenario, path.parent)}) for case in cases]


def predict(case: Case) -> Outcome:
    """moesim's figure for one case (single steps are read off the simulated trace)."""
    scenario = parse_scenario(
        {"name": case.name.split(",")[0].replace(" ", "_"), **case.scenario}, f"case '{case.name}'"
    )
    m = run_scenario(scenario, verify=False).metrics
    value = {
        "prefill_s": m.prefill_s,
        "decode_step_s": m.tpot_s,  # mean time between consecutive tokens of a sequence
        "ttft_mean_s": m.ttft_s.mean,
        "tpot_s": m.tpot_s,
        "total_s": m.total_s,
        "output_tokens_per_ms_per_gpu": m.throughput["output_tokens_per_ms_per_gpu"],
    }[case.metric]
    return Outcome(case.name, case.metric, value, case.measured)


def summarize(outcomes: list[Outcome]) -> dict[str, float]:
    errors = [abs(o.error) for o in outcomes]
    return {"median_abs_error": statistics.median(errors), "max_abs_error": max(errors), "cases": len(errors)}
