"""Report stage: what the profiles' calibration and end-to-end checks say of results that span several
deployment classes (a layout comparison, a deployment search), one line per hardware profile and class present.

A deployment's class (config.checked.ResultClass) is its model's class and whether its expert-parallel groups
span the data-parallel ranks (attention DP + EP): moesim's published-run errors differ by far between the two
(docs/serving-validation.md), so a comparison that ranks both kinds says which checks speak for which rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from simulator.config.checked import LAYOUT_CLASS, LAYOUT_CLASS_NAME, ResultClass
from simulator.config.engine import EngineProfile
from simulator.config.hardware import HardwareProfile, calibration_note


def class_name(result: ResultClass) -> str:
    """'dense models', 'MoE with attention DP + EP' or 'MoE without attention DP + EP'."""
    if not result.moe:
        return "dense models"
    return f"MoE {LAYOUT_CLASS_NAME[LAYOUT_CLASS[result.experts_across_dp]]}"


def check_lines(results: Iterable[tuple[HardwareProfile, ResultClass]], engine: EngineProfile | None) -> list[str]:
    """For results given as (their hardware profile, their class): 'Calibration: ...' for each uncalibrated
    profile and class present (config.hardware.calibration_note), then 'Engine: ...' for each class present
    (EngineProfile.check_note) when an engine profile priced them; each headed by its class when the results
    span several classes (a profile's note once when it reads the same for each), by its profile when they
    span several profiles. Sentences end with a full stop."""
    pairs = {(hw.name, cls): hw for hw, cls in results}
    classes = sorted({cls for _, cls in pairs})
    profiles = sorted({name for name, _ in pairs})
    lines = []
    for name in profiles:
        notes = {cls: calibration_note(hw, cls) for (n, cls), hw in sorted(pairs.items()) if n == name}
        shared = len(set(notes.values())) == 1  # the same sentence for every class (no checks that differ)
        for cls, note in notes.items():
            if not note:
                continue
            heads = [name] if len(profiles) > 1 else []
            heads += [class_name(cls)] if len(classes) > 1 and not shared else []
            head = f" ({', '.join(heads)})" if heads else ""
            lines.append(f"Calibration{head}: {note}.")
            if shared:
                break
    if engine is not None:
        for cls in classes:
            head = f" ({class_name(cls)})" if len(classes) > 1 else ""
            lines.append(f"Engine{head}: {engine.check_note(cls)}.")
    return lines
