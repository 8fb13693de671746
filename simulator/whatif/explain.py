"""What-if stage, explanations: what bounds a deployment at a knob's answer (the critical-path sentence), and
why a knob cannot reach a target (what remains the bound, and which resource would have to grow instead)."""

from __future__ import annotations

from dataclasses import replace

from simulator.config import Scenario
from simulator.sweep.run import run_folded
from simulator.whatif.knobs import KNOBS, RESOURCE_KNOBS
from simulator.whatif.search import Answer

#: Words for a target metric in a sentence.
METRIC_WORDS = {
    "output_tokens_per_ms_per_gpu": "output throughput",
    "prefill_tokens_per_ms_per_gpu": "prefill throughput",
    "total_tokens_per_ms_per_gpu": "total throughput",
    "ttft_s": "TTFT",
    "tpot_s": "TPOT",
    "total_s": "the run's time",
    "memory_bytes_per_gpu": "memory per GPU",
}


def bound_sentence(scenario: Scenario, metric: str, decode_sample: int = 8) -> str:
    """What bounds `metric` in the scenario: the critical-path sentence of the phase that sets it
    (critical_path.analyse on the folded, sampled run), or for memory the largest part of the fullest
    GPU. Runs in a worker: simulates once more with the critical path, which the sweep's runs skip."""
    from simulator import critical_path
    from simulator.pipeline import no_gc

    with no_gc():
        run = run_folded(scenario, decode_sample)
    m = run.metrics
    if metric == "memory_bytes_per_gpu":
        gpu = max(m.memory, key=lambda g: g.total_bytes)
        parts = {
            "the KV cache": gpu.kv_cache_bytes,
            "the weights": gpu.weight_bytes,
            "activations": gpu.activation_bytes,
            "the runtime reserve": gpu.reserve_bytes,
        }
        what = max(parts, key=parts.__getitem__)
        return f"memory per GPU is mostly {what}: {parts[what] / 1e9:.3g} of {gpu.total_bytes / 1e9:.3g} GB on GPU {gpu.gpu}"
    summary, _ = critical_path.analyse(run.dag, run.sim.ops, run.scenario.num_gpus)
    sentences = summary["sentences"]
    if metric in ("ttft_s", "prefill_tokens_per_ms_per_gpu") or "tpot" not in sentences:
        return sentences["ttft"]
    if metric == "tpot_s":
        return sentences["tpot"]
    decode_share = m.decode_s / m.total_s if m.total_s else 0.0
    if decode_share >= 0.5:
        return f"decode takes {100 * decode_share:.0f} % of the run; {sentences['tpot']}"
    return f"prefill takes {100 * (1 - decode_share):.0f} % of the run; {sentences['ttft']}"


def why_none(answer: Answer, answers: list[Answer]) -> str:
    """The reason an answer with status 'none' gives: the search's finding, and for a hardware figure
    which of the other figures would reach the target, and how much faster it would have to be."""
    knob = KNOBS[answer.knob]
    text = answer.reason
    if answer.knob in RESOURCE_KNOBS:
        what = METRIC_WORDS.get(answer.metric, answer.metric)
        text = f"no amount of {knob.words.replace(' (scale)', '')} up to x100 reaches the {what} target"
        reached = [
            (a.knob, a.best.label.lstrip("x"))
            for a in answers
            if a.metric == answer.metric and a.knob in RESOURCE_KNOBS and a.status == "found" and a.best is not None
        ]
        if reached:
            text += "; " + "; ".join(
                f"{KNOBS[k].words.replace(' (scale)', '')} would have to be {factor} times higher"
                for k, factor in reached
            )
        else:
            text += "; neither would any other single hardware figure up to x100"
    return text


def with_explanations(answers: list[Answer], bounds: dict[str, str], key) -> list[Answer]:
    """Each answer with its bound sentence (from `bounds`, by the scenario key of its best point) and,
    when no value reaches the target, its reason."""
    out = []
    for a in answers:
        bound = bounds.get(key(a.best.scenario), "") if a.best is not None else ""
        out.append(replace(a, bound=bound))
    return [replace(a, reason=why_none(a, out)) if a.status == "none" else a for a in out]
