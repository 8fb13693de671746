"""Command stage: `moesim profiles`, the table of hardware profiles."""

from __future__ import annotations

import sys

from rich.console import Console

from simulator.commands import EXIT_BAD_INPUT, EXIT_OK


def add_arguments(parser) -> None:
    """`moesim profiles` takes no arguments."""


def command(args, console: Console) -> int:
    from rich.table import Table

    from simulator.config.hardware import ProfileError, available_profiles, load_profile

    table = Table(title="Hardware profiles (hardware_profiles/*.yaml)")
    for col in ("name", "status", "memory", "fp16 peak", "HBM", "NVLink/dir", "NIC/dir", "figures", "description"):
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
            p.description,
        )
    console.print(table)
    console.print(
        "status: calibrated (tables measured on this GPU), transferred (measured on a GPU of the same silicon), "
        "uncalibrated (datasheet x assumed efficiencies; every result on it says what error to expect). "
        "figures: where each figure comes from (figure_sources); see docs/calibration-status.md"
    )
    if broken:
        print(f"moesim: {len(broken)} profile(s) left out of the table: {'; '.join(broken)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK
