"""Command stage: `moesim profiles`, the tables of hardware and engine profiles, each with how it was checked
against published runs."""

from __future__ import annotations

import sys

from rich.console import Console

from simulator.commands import EXIT_BAD_INPUT, EXIT_OK
from simulator.config.checked import MODEL_CLASS_NAME


def add_arguments(parser) -> None:
    """`moesim profiles` takes no arguments."""


def command(args, console: Console) -> int:
    from rich.table import Table

    from simulator.config.hardware import ProfileError, available_profiles, load_profile

    table = Table(title="Hardware profiles (hardware_profiles/*.yaml)")
    columns = ("name", "status", "memory", "fp16 peak", "HBM", "NVLink/dir", "NIC/dir", "figures", "checked end to end")
    for col in (*columns, "description"):
        table.add_column(col)
    broken = []
    for name in available_profiles():
        try:
            p = load_profile(name)
        except ProfileError as exc:  # list the others; name this one below
            broken.append(f"{name} ({exc})")
            continue
        by_kind = p.figures_by_kind()
        table.add_row(
            name,
            p.calibration_status,
            f"{p.memory_bytes / 1e9:.1f} GB",
            f"{p.peak_flops_per_s.fp16 / 1e12:.0f} TFLOP/s",
            f"{p.hbm_bytes_per_s / 1e12:.2f} TB/s",
            f"{p.intra_node.bytes_per_s / 1e9:.0f} GB/s",
            f"{p.inter_node.bytes_per_s / 1e9:.0f} GB/s",
            ", ".join(f"{len(figures)} {kind}" for kind, figures in by_kind.items()),
            checked_cell(p.checked),
            p.description,
        )
    console.print(table)
    console.print(
        "status: calibrated (tables measured on this GPU), transferred (measured on a GPU of the same silicon), "
        "uncalibrated (datasheet x assumed efficiencies; every result on it says what error to expect). "
        "figures: where each figure comes from (figure_sources); see docs/calibration-status.md"
    )
    broken += _engine_table(console)
    if broken:
        print(f"moesim: {len(broken)} profile(s) left out of the tables: {'; '.join(broken)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


#: How the profiles table names a check's layout class (CheckedSpec.layouts).
_LAYOUT_CELL = {"all": "", "experts_across_dp": " (attention DP + EP)", "other": " (no attention DP + EP)"}


def checked_cell(checked) -> str:
    """'54 dense figures: 4.3 % median, 15.7 % max, 34 faster' per recorded check (EngineProfile /
    HardwareProfile.checked; 'dense' / 'MoE' where the check is of one model class, '(attention DP + EP)' /
    '(no attention DP + EP)' where of one layout class; 'N faster': the rows where moesim was faster than
    measured, where recorded); '-': none."""
    cells = []
    for c in checked:
        of = (" " + MODEL_CLASS_NAME[c.models] if c.models != "all" else "") + _LAYOUT_CELL[c.layouts]
        faster = f", {c.faster_rows} faster" if c.faster_rows is not None else ""
        cells.append(
            f"{c.rows}{of} figures: {100 * c.median_abs_error:.1f} % median, {100 * c.max_abs_error:.1f} % max{faster}"
        )
    return "; ".join(cells) or "-"


def _engine_table(console: Console) -> list[str]:
    """The engine profiles (engine_profiles/*.yaml) and how each was checked; the ones that do not load, named."""
    from rich.table import Table

    from simulator.config import ScenarioError
    from simulator.config.engine import available_engines, load_engine_profile

    table = Table(title="Engine profiles (engine_profiles/*.yaml; serving.engine)")
    for col in ("name", "version", "host time", "checked end to end", "description"):
        table.add_column(col)
    broken = []
    for name in available_engines():
        try:
            e = load_engine_profile(name)
        except ScenarioError as exc:
            broken.append(f"{name} ({exc})")
            continue
        table.add_row(name, e.version, e.host.text, checked_cell(e.checked), e.description)
    console.print(table)
    console.print(
        "host time: the host's work per iteration, hidden behind the GPU pass when overlapped (0 where no figure is "
        "published); checked end to end: published runs the profile priced (`checked:` in its YAML; `moesim "
        "validate` re-measures them), |error| over their figures; '-': never checked, its end-to-end error is unknown"
    )
    return broken
