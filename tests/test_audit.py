"""Claim audit: the seed document's declared figures and hand-made claims checked against moesim's own figures."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import TINY_MOE, make_scenario

from simulator.audit import REL_TOLERANCE, AuditLine, audit
from simulator.memory import GpuMemory

# TINY_MOE totals 329216 parameters (tests/test_memory.py): 2 layers and 2 of the 4 experts per GPU.
TINY_TOTAL = 329216


def _line(lines: list[AuditLine], claim: str) -> AuditLine:
    found = [a for a in lines if a.claim == claim]
    assert len(found) == 1, [a.claim for a in lines]
    return found[0]


def _tiny_declaring(**declared):
    return make_scenario(TINY_MOE, declared=declared)


# ---------------------------------------------------------------------------------------------
# The seed scenario (the origin document)


def test_seed_ten_billion_parameter_claim_does_not_hold(seed):
    line = _line(audit(seed), "total parameters")
    assert (line.declared, line.computed, line.verdict) == ("10B", "285.4M", "does not hold")


def test_seed_parameter_explanation_gives_the_parts_and_the_shortfall(seed):
    # per layer: attention 4 * 512 * 512 = 1048576, experts 16 * 2 * 512 * 1024 = 16777216;
    # active: 16 * (1048576 + 2 * 1048576 + 8192 + 1024) = 50479104; 10e9 / 285360128 = 35.04
    line = _line(audit(seed), "total parameters")
    assert line.explanation == (
        "16 layers x (attention 1.049M + experts 16.78M + router/norms) = 285.4M "
        "(50.48M active per token): 35x fewer than declared"
    )


def test_seed_tp_ep_pp_product_is_flagged_as_ep_folded_onto_the_tp_pair(seed):
    line = _line(audit(seed), "parallel layout")
    assert line.declared == "TP=2 x EP=2 x PP=2 on 4 GPUs"
    assert line.computed == "TP=2 x EP=2 x PP=2 x DP=1 on 4 GPUs"
    assert line.verdict == "holds only with EP folded"
    assert line.explanation.startswith("the product 8 is not the GPU count: GPUs = pp x dp x tp = 2 x 1 x 2 = 4; ")
    assert "EP=2 is folded onto the 2 GPUs of each stage" in line.explanation


def test_seed_experts_and_layers_per_gpu_hold(seed):
    lines = audit(seed)
    experts, layers = _line(lines, "experts per GPU"), _line(lines, "layers per GPU")
    assert (experts.declared, experts.computed, experts.verdict) == ("8", "8 per layer", "holds")
    assert experts.explanation.endswith("64 expert FFNs in all on each GPU")  # 8 experts x 8 layers
    assert (layers.declared, layers.computed, layers.verdict) == ("8", "8", "holds")


def test_seed_timing_claims_are_pending_without_a_run(seed):
    lines = audit(seed)
    assert _line(lines, "output throughput (tokens/ms/GPU)").verdict == "pending"
    assert _line(lines, "TTFT (s)").verdict == "pending"


def test_seed_memory_claim_needs_the_memory_rows(seed):
    assert "memory utilisation per GPU" not in [a.claim for a in audit(seed)]


def test_seed_audit_lines_in_order(seed):
    assert [a.claim for a in audit(seed)] == [
        "total parameters",
        "parallel layout",
        "experts per GPU",
        "layers per GPU",
        "output throughput (tokens/ms/GPU)",
        "TTFT (s)",
    ]


# ---------------------------------------------------------------------------------------------
# Claims that match


def test_matching_declared_figures_all_hold():
    s = _tiny_declaring(
        total_params=TINY_TOTAL, num_gpus=4, parallel_degrees={"tp": 2, "pp": 2}, experts_per_gpu=2, layers_per_gpu=2
    )
    lines = audit(s)
    assert [(a.claim, a.verdict) for a in lines] == [
        ("total parameters", "holds"),
        ("parallel layout", "holds"),
        ("experts per GPU", "holds"),
        ("layers per GPU", "holds"),
    ]


def test_a_matching_layout_explains_the_gpu_count():
    line = _line(audit(_tiny_declaring(parallel_degrees={"tp": 2, "pp": 2}, num_gpus=4)), "parallel layout")
    assert (line.declared, line.explanation) == ("TP=2 x PP=2 on 4 GPUs", "GPUs = pp x dp x tp = 2 x 1 x 2 = 4")


def test_parameter_claim_holds_within_ten_percent():
    assert REL_TOLERANCE == 0.10
    assert _line(audit(_tiny_declaring(total_params=TINY_TOTAL * 1.09)), "total parameters").verdict == "holds"
    assert _line(audit(_tiny_declaring(total_params=TINY_TOTAL * 0.92)), "total parameters").verdict == "holds"


def test_parameter_claim_beyond_ten_percent_does_not_hold():
    line = _line(audit(_tiny_declaring(total_params=TINY_TOTAL * 1.2)), "total parameters")
    assert line.verdict == "does not hold"


def test_small_parameter_counts_are_written_in_millions():
    line = _line(audit(_tiny_declaring(total_params=TINY_TOTAL)), "total parameters")
    assert (line.declared, line.computed) == ("0.3292M", "0.3292M")


def test_a_wrong_degree_does_not_hold_and_names_the_real_layout():
    line = _line(audit(_tiny_declaring(parallel_degrees={"tp": 4, "pp": 1})), "parallel layout")
    assert line.verdict == "does not hold"
    assert line.explanation == "the scenario's layout is tp=2 ep=2 pp=2 dp=1 on 4 GPUs"


def test_a_wrong_gpu_count_does_not_hold():
    line = _line(audit(_tiny_declaring(parallel_degrees={"tp": 2, "pp": 2}, num_gpus=8)), "parallel layout")
    assert line.verdict == "does not hold"


def test_wrong_experts_and_layers_per_gpu_do_not_hold():
    lines = audit(_tiny_declaring(experts_per_gpu=4, layers_per_gpu=4))
    assert _line(lines, "experts per GPU").verdict == "does not hold"
    assert _line(lines, "layers per GPU").verdict == "does not hold"


def test_uneven_layer_split_shows_every_count():
    s = make_scenario(TINY_MOE, parallel={"layer_split": [1, 3]}, declared={"layers_per_gpu": 2})
    line = _line(audit(s), "layers per GPU")
    assert (line.computed, line.verdict) == ("1/3", "does not hold")


# ---------------------------------------------------------------------------------------------
# No declared section


def test_a_scenario_without_declared_gives_no_lines(tiny_moe):
    assert tiny_moe.declared is None
    assert audit(tiny_moe) == []


def test_an_empty_declared_section_gives_no_lines():
    assert audit(_tiny_declaring()) == []


# ---------------------------------------------------------------------------------------------
# Claims that need memory rows or a run


def _memory(util_by_gpu: list[float]) -> list[GpuMemory]:
    return [GpuMemory(g, u * 100.0, 0.0, 0.0, 0.0, 100.0) for g, u in enumerate(util_by_gpu)]


def test_memory_claim_is_checked_against_the_busiest_gpu():
    line = _line(
        audit(_tiny_declaring(memory_utilization=0.5), _memory([0.25, 0.5, 0.3, 0.1])), "memory utilisation per GPU"
    )
    assert (line.declared, line.computed, line.verdict) == ("50.0%", "50.0% (GPU 1)", "holds")


def test_memory_claim_far_from_the_computed_utilisation_does_not_hold():
    line = _line(audit(_tiny_declaring(memory_utilization=0.234), _memory([0.5, 0.5])), "memory utilisation per GPU")
    assert (line.declared, line.verdict) == ("23.4%", "does not hold")


def _metrics(output_per_ms: float, ttft_max_s: float) -> SimpleNamespace:
    return SimpleNamespace(
        throughput={
            "output_tokens_per_ms_per_gpu": output_per_ms,
            "total_tokens_per_ms_per_gpu": 2.0,
            "prefill_tokens_per_ms_per_gpu": 3.0,
        },
        total_s=1.0,
        ttft_s=SimpleNamespace(max=ttft_max_s, mean=ttft_max_s / 2),
        bottleneck={"prefill": "why"},
    )


@pytest.mark.parametrize("output, verdict", [(900.0, "holds"), (850.0, "holds"), (849.0, "does not hold")])
def test_throughput_claim_is_a_lower_bound(output, verdict):
    line = _line(
        audit(_tiny_declaring(output_tokens_per_ms_per_gpu=850), metrics=_metrics(output, 1.0)),
        "output throughput (tokens/ms/GPU)",
    )
    assert (line.declared, line.verdict) == (">= 850", verdict)


@pytest.mark.parametrize("ttft, verdict", [(1.5, "holds"), (2.5, "does not hold")])
def test_ttft_claim_is_an_upper_bound_on_the_worst_sequence(ttft, verdict):
    line = _line(audit(_tiny_declaring(ttft_s=2.0), metrics=_metrics(900.0, ttft)), "TTFT (s)")
    assert (line.declared, line.verdict) == ("< 2", verdict)
    assert line.computed == f"{ttft:.3g} (max), {ttft / 2:.3g} (mean)"


def test_audit_line_to_dict_has_the_five_fields():
    line = AuditLine("c", "d", "e", "holds", "x")
    assert line.to_dict() == {"claim": "c", "declared": "d", "computed": "e", "verdict": "holds", "explanation": "x"}


# ---------------------------------------------------------------------------------------------
# Wording edge cases (the layout line names what is folded, and only then)


def test_a_gpu_count_alone_holds_without_a_folding_note():
    line = _line(audit(_tiny_declaring(num_gpus=4)), "parallel layout")
    assert (line.declared, line.verdict) == ("on 4 GPUs", "holds")


def test_a_folded_etp_is_named_as_etp():
    # TINY_MOE is tp=2 ep=2 pp=2 on 4 GPUs; with ep=1 and etp=2 the product tp x etp x pp = 8 is not 4 either.
    s = make_scenario(
        TINY_MOE, parallel={"ep": 1, "etp": 2}, declared={"parallel_degrees": {"tp": 2, "etp": 2, "pp": 2}}
    )
    line = _line(audit(s), "parallel layout")
    assert line.verdict == "holds only with ETP folded"
    assert "ETP=2 is folded onto the 2 GPUs of each stage (the EP pair is the TP pair)" in line.explanation


def test_an_ep_group_smaller_than_the_tp_group_is_not_called_the_tp_pair():
    s = make_scenario(
        TINY_MOE,
        cluster={"num_gpus": 8, "gpus_per_node": 8},
        parallel={"tp": 4, "ep": 2, "pp": 2},
        declared={"parallel_degrees": {"tp": 4, "ep": 2, "pp": 2}},
    )
    line = _line(audit(s), "parallel layout")
    assert line.verdict == "holds only with EP folded"
    assert "(each EP group spans 2 of them)" in line.explanation and "TP pair" not in line.explanation


def test_expert_ffns_per_gpu_follow_an_uneven_layer_split():
    s = make_scenario(TINY_MOE, parallel={"layer_split": [1, 3]}, declared={"experts_per_gpu": 2})
    line = _line(audit(s), "experts per GPU")
    assert line.explanation.endswith(
        "2 to 6 expert FFNs in all per GPU, by pipeline stage"
    )  # 2 experts x 1 or 3 layers


def test_a_ttft_claim_of_less_than_x_fails_at_exactly_x():
    line = _line(audit(_tiny_declaring(ttft_s=2.0), metrics=_metrics(900.0, 2.0)), "TTFT (s)")
    assert line.verdict == "does not hold"
