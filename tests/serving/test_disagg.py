"""Disaggregated serving: KV transfer bytes by hand for TP/PP pairs, the fair-share link model, agreement with
an aggregated run where the two must agree, contention on a shared port, the scenario route, bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy
import yaml
from conftest import TINY_MOE, TINY_SERVING
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.cli import main
from simulator.config import ModelSpec, ScenarioError, ServingError, load_model_preset, parse_scenario
from simulator.config.serving import ReplicaSpec
from simulator.serving.disagg import disaggregated_inputs, simulate_disaggregated
from simulator.serving.disagg_simulate import DisaggregatedInputs, simulate_disaggregated_requests
from simulator.serving.kv_transfer import KVFlow, PoolLayout, kv_transfer_bytes, kv_transfer_flows
from simulator.serving.link_network import Fabric, LinkNetwork, TransferRoute
from simulator.serving.maxrate import max_rate
from simulator.serving.pricing import LinearPricer, SeqWork
from simulator.serving.session import serving_inputs
from simulator.serving.simulate import simulate_serving
from simulator.serving.stats import request_table, summarize
from simulator.serving.workload import Request, generate_requests
from tests.serving.conftest import make_spec

ROOT = Path(__file__).resolve().parents[2]
MIXTRAL = ModelSpec.model_validate(load_model_preset("mixtral-8x7b"))  # 32 layers, 8 KV heads of 128, bf16
TOKENS = 1000
#: One (layer, KV head) of 1000 tokens: K and V, 128 values of 2 bytes each.
UNIT = TOKENS * 2 * 128 * 2


# ---------------------------------------------------------------- transfer bytes


def test_mixtral_kv_layout_is_what_the_hand_figures_assume():
    assert (MIXTRAL.num_layers, MIXTRAL.kv_heads, MIXTRAL.head_size, MIXTRAL.kv_bytes_per_element) == (32, 8, 128, 2)


def test_tp4_to_tp8_sends_each_decode_rank_its_head_from_the_rank_holding_it():
    # prefill rank r holds heads 2r, 2r+1; decode rank d holds head d, which prefill rank d // 2 holds
    flows = kv_transfer_flows(MIXTRAL, PoolLayout(4, 1), PoolLayout(8, 1), TOKENS)
    assert flows == [KVFlow(d // 2, d, 32 * UNIT) for d in range(8)]
    assert kv_transfer_bytes(MIXTRAL, PoolLayout(4, 1), PoolLayout(8, 1), TOKENS) == 8 * 32 * UNIT == 131_072_000


def test_tp8_to_tp4_gathers_two_prefill_ranks_on_each_decode_rank():
    flows = kv_transfer_flows(MIXTRAL, PoolLayout(8, 1), PoolLayout(4, 1), TOKENS)
    assert flows == [KVFlow(s, d, 32 * UNIT) for d in range(4) for s in (2 * d, 2 * d + 1)]


def test_pp2_to_pp1_sends_each_stage_its_layers():
    # prefill GPU 0 holds layers 0-15, GPU 1 layers 16-31 (all 8 heads each); the decode GPU holds everything
    flows = kv_transfer_flows(MIXTRAL, PoolLayout(1, 2), PoolLayout(1, 1), TOKENS)
    assert flows == [KVFlow(0, 0, 16 * 8 * UNIT), KVFlow(1, 0, 16 * 8 * UNIT)]


def test_pp2_tp2_to_tp4_pairs_stage_and_head_slices():
    # prefill GPU stage*2 + rank: layers of its stage, heads 4r..4r+3; decode rank d: heads 2d, 2d+1
    flows = kv_transfer_flows(MIXTRAL, PoolLayout(2, 2), PoolLayout(4, 1), TOKENS)
    expected = sorted(
        (KVFlow(stage * 2 + d // 2, d, 16 * 2 * UNIT) for d in range(4) for stage in (0, 1)),
        key=lambda f: (f.dst_gpu, f.src_gpu),
    )
    assert flows == expected


def test_replicated_heads_are_sent_to_every_decode_rank_that_holds_them():
    # TP16 holds 8 KV heads twice over: decode rank d holds head d // 2, from prefill (TP8) rank d // 2
    flows = kv_transfer_flows(MIXTRAL, PoolLayout(8, 1), PoolLayout(16, 1), TOKENS)
    assert flows == [KVFlow(d // 2, d, 32 * UNIT) for d in range(16)]
    assert sum(f.num_bytes for f in flows) == 2 * 8 * 32 * UNIT


def test_mla_latent_goes_whole_to_every_decode_rank():
    m = ModelSpec.model_validate(load_model_preset("deepseek-v3"))
    per_token_layer = (m.kv_lora_rank + m.qk_rope_head_dim) * m.kv_bytes_per_element
    flows = kv_transfer_flows(m, PoolLayout(2, 1), PoolLayout(4, 1), TOKENS)
    assert flows == [KVFlow(d % 2, d, TOKENS * m.num_layers * per_token_layer) for d in range(4)]


# ---------------------------------------------------------------- the link model


def _finish_times(starts: list[tuple[float, float, tuple[int, ...]]], capacity: list[float]) -> list[float]:
    return _run_flows(starts, capacity)[0]


def _run_flows(starts: list[tuple[float, float, tuple[int, ...]]], capacity: list[float]):
    env = simpy.Environment()
    net = LinkNetwork(env, capacity)
    ends = [math.nan] * len(starts)

    def flow(i, at, num_bytes, links):
        yield env.timeout(at)
        yield net.send(num_bytes, links)
        ends[i] = env.now

    for i, (at, num_bytes, links) in enumerate(starts):
        env.process(flow(i, at, num_bytes, links))
    env.run()
    return ends, net


def test_one_flow_takes_bytes_over_bandwidth():
    assert _finish_times([(0.0, 2.0**30, (0,))], [2.0**30]) == [1.0]


def test_two_simultaneous_flows_on_one_port_take_twice_as_long():
    assert _finish_times([(0.0, 2.0**30, (0,)), (0.0, 2.0**30, (0,))], [2.0**30]) == [2.0, 2.0]


def test_a_later_flow_shares_the_port_from_its_start():
    # A alone for 0.5 s (half done), then both at half rate: A ends at 1.5; B has half left then, alone: 2.0
    assert _finish_times([(0.0, 2.0**30, (0,)), (0.5, 2.0**30, (0,))], [2.0**30]) == [1.5, 2.0]


def test_shares_are_max_min_fair_across_ports():
    # flow 0 crosses a slow port (1/4) and the shared one (1): it gets 1/4, flow 1 the remaining 3/4
    ends = _finish_times([(0.0, 1.0, (0, 1)), (0.0, 3.0, (1, 2))], [0.25, 1.0, 1.0])
    assert ends == [4.0, 4.0]


def test_a_flow_over_infinite_ports_ends_at_once():
    assert _finish_times([(0.5, 1.0, (0,)), (0.0, 1.0, (1,))], [math.inf, 1.0]) == [0.5, 1.0]


def test_flows_on_separate_ports_do_not_contend():
    assert _finish_times([(0.0, 1.0, (0, 1)), (0.0, 1.0, (2, 3))], [1.0] * 4) == [1.0, 1.0]


# ---------------------------------------------------------------- hand-built deployments

PRICER = LinearPricer(0.25, 1 / 16, 1 / 128)
INSTANT = Fabric(("port",), (math.inf,), {(0, 0): (TransferRoute(1.0, (0,)),)}, {(0, 0): 0.0})


def _inputs(spec, fabric=INSTANT, prefill_pricer=PRICER, decode_pricer=PRICER, prefill=1, decode=1):
    pool = spec.model_copy(update={"replicas": ReplicaSpec(count=prefill, gpus_per_replica=1)})
    dec = spec.model_copy(update={"replicas": ReplicaSpec(count=decode, gpus_per_replica=1)})
    return DisaggregatedInputs(spec, pool, dec, prefill_pricer, decode_pricer, fabric)


def _prefill_only(requests):
    return [Request(r.request_id, r.arrival_s, r.input_tokens, 1) for r in requests]


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_isolated_requests_with_a_free_link_have_the_aggregated_token_times(policy):
    """One request at a time: the prefill instance runs exactly the aggregated prefill iterations, the free
    transfer adds nothing, and the decode instance exactly the aggregated decode iterations."""
    spec = make_spec(
        workload={"arrivals": {"kind": "constant", "rate_per_s": 0.01}, "num_requests": 4},
        scheduler={"policy": policy, "chunk_size_tokens": 3 if policy == "chunked_prefill" else None},
    )
    agg = simulate_serving(spec, PRICER)
    dis = simulate_disaggregated_requests(_inputs(spec), generate_requests(spec))
    for a, d in zip(agg.records, dis.records):
        assert np.array_equal(a.token_times_s, d.token_times_s)
        assert (a.arrival_s, a.first_scheduled_s, a.finish_s) == (d.arrival_s, d.first_scheduled_s, d.finish_s)


def test_under_load_ttft_with_a_free_link_is_the_prefill_only_aggregated_ttft():
    """Many requests at once: the prefill pool is an aggregated deployment serving one-token requests, so each
    request's first token comes exactly when that deployment's would, as long as no request waits for a
    decode slot (the first token reaches the user with its KV on the decode instance): here the decode pool
    takes 64 sequences and 512 blocks, more than the 40 requests ever hold."""
    spec = make_spec(
        workload={
            "arrivals": {"kind": "poisson", "rate_per_s": 4.0},
            "num_requests": 40,
            "input_len": {"kind": "uniform", "min_tokens": 4, "max_tokens": 40},
            "output_len": {"kind": "uniform", "min_tokens": 2, "max_tokens": 9},
        },
        scheduler={"max_num_batched_tokens": 64, "kv_cache": {"capacity_blocks": 512}},
    )
    requests = generate_requests(spec)
    prefill_only = simulate_serving(spec, PRICER, _prefill_only(requests))
    wide = spec.scheduler.model_copy(update={"max_num_seqs": 64})
    inputs = _inputs(spec, decode_pricer=LinearPricer(0.5, 1 / 8))
    inputs = DisaggregatedInputs(
        spec,
        inputs.prefill_spec,
        inputs.decode_spec.model_copy(update={"scheduler": wide}),
        PRICER,
        inputs.decode_pricer,
        INSTANT,
    )
    dis = simulate_disaggregated_requests(inputs, requests)
    t = dis.disaggregation.transfers
    assert np.array_equal(t["start_s"], t["ready_s"]) and np.array_equal(t["end_s"], t["ready_s"])
    assert [r.token_times_s[0] for r in dis.records] == [r.token_times_s[0] for r in prefill_only.records]
    assert all(len(r.token_times_s) == r.output_tokens for r in dis.records)
    # and the aggregated run of the same requests is slower to the first token (decodes share its iterations)
    agg = simulate_serving(spec, PRICER, requests)
    assert sum(r.token_times_s[0] for r in agg.records) > sum(r.token_times_s[0] for r in dis.records)


def _fabric(bytes_per_s: float, latency_s: float = 0.0, bytes_per_token: float = 1024.0) -> Fabric:
    return Fabric(
        ("out", "in"),
        (bytes_per_s, bytes_per_s),
        {(0, 0): (TransferRoute(bytes_per_token, (0, 1)),)},
        {(0, 0): latency_s},
    )


def test_one_transfer_adds_latency_plus_bytes_over_bandwidth_to_ttft():
    spec = make_spec(workload={"arrivals": {"kind": "closed_loop", "concurrency": 1}, "num_requests": 1})
    (request,) = generate_requests(spec)  # 8 tokens in: 8 x 1024 bytes over 2**14 bytes/s = 0.5 s
    run = simulate_disaggregated_requests(_inputs(spec, _fabric(2.0**14, 0.125)), [request])
    prefill_s = PRICER((SeqWork(8, 0),))
    assert run.records[0].token_times_s[0] == prefill_s + 0.125 + 0.5
    t = run.disaggregation.transfers
    assert (t["start_s"][0], t["end_s"][0], t["num_bytes"][0]) == (prefill_s, prefill_s + 0.625, 8 * 1024.0)


def test_two_transfers_on_one_port_take_twice_as_long_as_one():
    spec = make_spec(workload={"arrivals": {"kind": "closed_loop", "concurrency": 2}, "num_requests": 2})
    requests = generate_requests(spec)
    one = simulate_disaggregated_requests(_inputs(spec, _fabric(2.0**14)), requests[:1])
    two = simulate_disaggregated_requests(_inputs(spec, _fabric(2.0**14)), requests)
    t1, t2 = one.disaggregation.transfers, two.disaggregation.transfers
    alone = t1["end_s"][0] - t1["start_s"][0]
    assert alone == 0.5
    assert list(t2["end_s"] - t2["start_s"]) == [2 * alone, 2 * alone]  # prefilled together, sent together
    links = two.disaggregation.links
    assert list(links["carried_bytes"]) == [2 * 8 * 1024.0] * 2 and list(links["busy_s"]) == [1.0, 1.0]


def test_prefill_blocks_are_held_until_the_transfer_ends():
    # room for one 12-token prompt (one block of 16): the second prefill waits for the first transfer to end
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 2},
            "num_requests": 2,
            "input_len": {"kind": "fixed", "tokens": 12},
            "output_len": {"kind": "fixed", "tokens": 2},
        },
        scheduler={"kv_cache": {"block_size_tokens": 16, "capacity_blocks": 1}},
    )
    requests = generate_requests(spec)
    pool = spec.model_copy(update={"replicas": ReplicaSpec(count=1)})
    big = spec.scheduler.model_copy(
        update={"kv_cache": spec.scheduler.kv_cache.model_copy(update={"capacity_blocks": 8})}
    )
    dec = spec.model_copy(update={"replicas": ReplicaSpec(count=1), "scheduler": big})
    inputs = DisaggregatedInputs(spec, pool, dec, PRICER, PRICER, _fabric(2.0**14, bytes_per_token=2.0**10))
    run = simulate_disaggregated_requests(inputs, requests)
    t = run.disaggregation.transfers
    first_end = t["end_s"][0]
    assert run.records[1].first_scheduled_s == first_end  # admitted when the first transfer freed the block


def test_one_token_requests_finish_at_their_prefill_without_a_transfer():
    spec = make_spec(workload={"output_len": {"kind": "fixed", "tokens": 1}, "num_requests": 2})
    run = simulate_disaggregated_requests(_inputs(spec, _fabric(1.0)), generate_requests(spec))
    assert len(run.disaggregation.transfers["request_id"]) == 0
    assert all(r.finish_s == r.token_times_s[0] for r in run.records)


def test_max_rate_search_runs_on_a_disaggregated_deployment():
    spec = make_spec(
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}, "num_requests": 60},
        targets={"ttft_p99_s": 4.0, "tpot_p99_s": 1.0},
    )

    def simulate(s, base_dir):
        return simulate_disaggregated_requests(_inputs(s, _fabric(2.0**14)), generate_requests(s))

    found = max_rate(spec, None, 0.05, 50.0, rel_tol=0.05, simulate=simulate)
    assert found.rate_per_s is not None and not found.capped
    met = found.curve.set_index("rate_per_s")["all_targets_met"]
    assert met[found.rate_per_s] and not met[met.index > found.rate_per_s].any()


# ---------------------------------------------------------------- scenarios

DISAGG = {
    **TINY_SERVING,
    "workload": {
        **{k: v for k, v in TINY_SERVING["workload"].items() if k != "seed"},
        "arrivals": {"kind": "poisson", "rate_per_s": 20.0},
        "num_requests": 60,
        "warmup_requests": 5,
    },
    "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "kv_cache": {"block_size_tokens": 16}},
    "targets": {"ttft_p99_s": 10.0, "tpot_p99_s": 1.0},
    "disaggregation": {
        "prefill": {"instances": 2, "parallel": {"tp": 1}},
        "decode": {"instances": 1, "parallel": {"tp": 2, "ep": 2}},
    },
}


def _scenario_dict(**disagg) -> dict:
    data = copy.deepcopy(TINY_MOE)
    data["serving"] = copy.deepcopy(DISAGG)
    data["serving"]["disaggregation"].update(disagg)
    return data


def test_a_scenario_runs_both_pools_and_counts_every_gpu():
    scenario = parse_scenario(_scenario_dict(), "t")
    deployment = disaggregated_inputs(scenario)
    assert deployment.prefill.first_gpus == (0, 1) and deployment.decode.first_gpus == (2,)
    # tiny model: 4 layers x 4 KV heads x 16 x 2 (K, V) x 2 bytes = 1024 bytes per token, half to each decode GPU
    assert [r.bytes_per_token for r in deployment.fabric.routes[(0, 0)]] == [512.0, 512.0]
    run = simulate_disaggregated(scenario)
    summary = summarize(run, request_table(run))
    assert summary.figures["num_gpus"] == 4 and summary.figures["transfers"] == 55
    assert run.disaggregation.prefill_instances == 2 and len(run.peak_kv_blocks) == 3
    assert {r.replica for r in run.records} == {2}  # every request decoded on the decode instance (replica 2)
    assert summary.figures["transfer_mean_s"] > 0 and 0 < summary.figures["link_utilisation_max"] < 1


def test_pools_run_the_engine_as_an_aggregated_replica_of_their_layout_does():
    """With serving.engine, each instance is priced as the engine runs it (its kernels, CUDA-graph sizes, host
    time): a decode pool's iteration costs what an aggregated replica of the same layout and engine costs."""
    from simulator.serving.engine_pricing import EnginePricer

    data = _scenario_dict()
    data["serving"]["engine"] = "vllm"
    deployment = disaggregated_inputs(parse_scenario(data, "t"))
    for plan in (deployment.prefill, deployment.decode):
        assert isinstance(plan.pricer.pricer, EnginePricer)
    agg = copy.deepcopy(data)
    del agg["serving"]["disaggregation"]
    agg.update(parallel={"tp": 2, "ep": 2, "pp": 1, "dp": 1}, cluster={"num_gpus": 2, "gpus_per_node": 4})
    _, pricer, _ = serving_inputs(parse_scenario(agg, "agg"))
    two, five = (SeqWork(1, 30), SeqWork(1, 50)), (SeqWork(1, 7),) * 5
    for batch in (two, five):
        assert deployment.decode.pricer(batch) == pricer(batch)
    plain = disaggregated_inputs(parse_scenario(_scenario_dict(), "t"))
    assert plain.decode.pricer(five) < pricer(five)  # vLLM replays the CUDA graph captured for 8 sequences
    import simulator

    assert simulator.serve(data).priced_by.startswith("EnginePricer(vllm ")  # and the report says so


def test_a_pipelined_prefill_pool_sends_each_stage_its_layers():
    # prefill PP2 (GPU 0: layers 0-1, GPU 1: layers 2-3) -> decode TP2 (GPUs 2-3, two KV heads each):
    # 4 flows of 2 layers x 2 heads x 16 x 2 x 2 bytes = 256 bytes per token
    data = _scenario_dict(prefill={"instances": 1, "parallel": {"pp": 2}})
    scenario = parse_scenario(data, "t")
    deployment = disaggregated_inputs(scenario)
    names = deployment.fabric.link_names
    flows = [(names[r.links[0]], names[r.links[1]], r.bytes_per_token) for r in deployment.fabric.routes[(0, 0)]]
    assert flows == [
        ("nvlink out gpu 0", "nvlink in gpu 2", 256.0),
        ("nvlink out gpu 1", "nvlink in gpu 2", 256.0),
        ("nvlink out gpu 0", "nvlink in gpu 3", 256.0),
        ("nvlink out gpu 1", "nvlink in gpu 3", 256.0),
    ]
    assert deployment.prefill.spec.scheduler.pipeline_batches == 2
    run = simulate_disaggregated(scenario)
    assert len(run.disaggregation.transfers["request_id"]) == 60
    assert all(len(r.token_times_s) == r.output_tokens for r in run.records)


def test_separate_nodes_sends_kv_over_the_nic():
    data = _scenario_dict(
        placement="separate_nodes",
        prefill={"instances": 1, "parallel": {"tp": 2, "ep": 2}},
        decode={"instances": 1, "parallel": {"tp": 2, "ep": 2}},
    )
    data["cluster"] = {"num_gpus": 4, "gpus_per_node": 2}
    deployment = disaggregated_inputs(parse_scenario(data, "t"))
    assert deployment.decode.first_gpus == (2,)
    assert all(name.startswith("nic") for name in deployment.fabric.link_names)
    h100 = deployment.hw.inter_node
    assert set(deployment.fabric.link_bytes_per_s) == {h100.bytes_per_s * h100.efficiency}


def test_link_override_replaces_the_profile():
    data = _scenario_dict(intra_node={"bytes_per_s": 1.0e9, "latency_s": 0.001})
    fabric = disaggregated_inputs(parse_scenario(data, "t")).fabric
    assert set(fabric.link_bytes_per_s) == {1.0e9} and set(fabric.latency_s.values()) == {0.001}


# ---------------------------------------------------------------- bad input


def test_pools_that_do_not_fit_the_cluster_are_one_line():
    data = _scenario_dict(decode={"instances": 2, "parallel": {"tp": 2}})
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "t")
    assert str(err.value) == (
        "t: serving.disaggregation: 2 prefill x 1 GPUs + 2 decode x 2 GPUs = 6 GPUs do not fit cluster.num_gpus "
        "= 4; lower the instances or the pools' tp/pp, or raise cluster.num_gpus"
    )


def test_a_pool_layout_that_breaks_a_rule_names_the_pool_field():
    data = _scenario_dict(prefill={"instances": 1, "parallel": {"tp": 3}})
    with pytest.raises(ScenarioError, match=r"serving\.disaggregation\.prefill\.parallel\.tp: tp = 3 must divide"):
        parse_scenario(data, "t")


def test_a_pool_that_cannot_hold_the_model_is_one_line():
    data = yaml.safe_load((ROOT / "scenarios" / "mixtral_8x7b_8xh100_disagg.yaml").read_text())
    data["serving"]["disaggregation"]["prefill"]["parallel"] = {"tp": 1}
    with pytest.raises(ServingError) as err:
        disaggregated_inputs(parse_scenario(data, "m"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("serving.disaggregation.prefill.scheduler.kv_cache: no room")
    assert "give serving.disaggregation.prefill.parallel more GPUs" in message


def test_an_instance_straddling_nodes_is_one_line():
    data = _scenario_dict(
        prefill={"instances": 1, "parallel": {"tp": 1}}, decode={"instances": 1, "parallel": {"tp": 2, "ep": 2}}
    )
    data["cluster"] = {"num_gpus": 4, "gpus_per_node": 2}
    with pytest.raises(ServingError, match="straddles nodes of 2 GPUs"):
        disaggregated_inputs(parse_scenario(data, "t"))


def test_a_static_decode_pool_is_refused():
    data = _scenario_dict(decode={"instances": 1, "parallel": {"tp": 2}, "scheduler": {"policy": "static"}})
    with pytest.raises(ServingError, match="decode.scheduler.policy = static"):
        disaggregated_inputs(parse_scenario(data, "t"))


def test_serve_cli_on_a_bad_split_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(_scenario_dict(prefill={"instances": 4, "parallel": {"tp": 1}})))
    assert main(["serve", str(path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit cluster.num_gpus = 4" in err
    assert not (tmp_path / "x").exists()


def test_serve_cli_writes_transfer_figures(tmp_path, capsys):
    import json

    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(_scenario_dict()))
    out = tmp_path / "out"
    assert main(["serve", str(path), "--out", str(out), "--max-rate", "--rel-tol", "0.2"]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["figures"]["transfers"] == 55 and doc["figures"]["transfer_p99_s"] > 0
    assert "KV transfers" in (out / "summary.md").read_text() and (out / "rate_curve.csv").is_file()
    transfers = pd.read_csv(out / "transfers.csv")
    assert len(transfers) == 60 and (transfers["transfer_s"] > 0).all()
    links = pd.read_csv(out / "links.csv")
    assert set(links["link"]) == {"nvlink out gpu 0", "nvlink out gpu 1", "nvlink in gpu 2", "nvlink in gpu 3"}
    printed = capsys.readouterr().out
    assert "disaggregated 2P (1 GPU) + 1D (TP2 EP2), packed" in printed and "max rate" in printed


def test_the_aggregated_inputs_of_a_disaggregated_scenario_are_its_aggregated_layout():
    # pools of 1 + 2 GPUs; the scenario's own layout (PP2 TP2) uses all 4: that is what serving_inputs serves
    scenario = parse_scenario(_scenario_dict(prefill={"instances": 1, "parallel": {"tp": 1}}), "t")
    assert scenario.serving.num_gpus == 3
    spec, _, num_gpus = serving_inputs(scenario)
    assert spec.disaggregation is None and num_gpus == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 64).map(lambda k: k / 16), st.integers(1, 256).map(float)), min_size=1, max_size=8
    )
)
def test_one_port_is_work_conserving(flows):
    """Whatever the flows' starts and sizes, a port never idles while a flow is on it: the last flow ends when
    a single server of the port's bandwidth would end the same work, and every byte is carried once."""
    capacity = 16.0
    ends, net = _run_flows([(at, num_bytes, (0,)) for at, num_bytes in flows], [capacity])
    t = 0.0
    for at, num_bytes in sorted(flows):
        t = max(t, at) + num_bytes / capacity
    assert max(ends) == pytest.approx(t, rel=1e-9)
    assert all(end >= at + num_bytes / capacity - 1e-9 for (at, num_bytes), end in zip(flows, ends))
    assert net.carried_bytes[0] == pytest.approx(sum(b for _, b in flows), rel=1e-9)


def _decode_admission_run(admission: str, capacity_blocks: int, input_tokens: int, output_tokens: int):
    """Three requests prefilled together, sent over a free link to one decode instance of `capacity_blocks`
    16-token blocks admitting by `admission`."""
    spec = make_spec(
        workload={
            "arrivals": {"kind": "closed_loop", "concurrency": 3},
            "num_requests": 3,
            "input_len": {"kind": "fixed", "tokens": input_tokens},
            "output_len": {"kind": "fixed", "tokens": output_tokens},
        },
        scheduler={"max_num_batched_tokens": 4096, "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 512}},
    )
    kv = spec.scheduler.kv_cache.model_copy(update={"capacity_blocks": capacity_blocks})
    scheduler = spec.scheduler.model_copy(update={"admission": admission, "kv_cache": kv})
    inputs = _inputs(spec)
    inputs = DisaggregatedInputs(
        spec,
        inputs.prefill_spec,
        inputs.decode_spec.model_copy(update={"scheduler": scheduler}),
        PRICER,
        PRICER,
        INSTANT,
    )
    return simulate_disaggregated_requests(inputs, generate_requests(spec))


def test_a_reserving_decode_pool_takes_a_request_only_with_its_whole_kv():
    # 4 blocks; 12 + 30 tokens reserve 41 tokens = 3 blocks: one request at a time, never preempted. On demand
    # all three take their prompt's block at once and preempt as they grow.
    reserve = _decode_admission_run("reserve", 4, 12, 30)
    starts, finishes = reserve.disaggregation.transfers["start_s"], [r.finish_s for r in reserve.records]
    assert reserve.preemptions == 0
    assert starts[1] == finishes[0] and starts[2] == finishes[1]
    on_demand = _decode_admission_run("on_demand", 4, 12, 30)
    assert len(set(on_demand.disaggregation.transfers["start_s"])) == 1 and on_demand.preemptions > 0


def test_an_estimating_decode_pool_keeps_512_tokens_free_for_every_request_it_holds():
    # 80 blocks = 1,280 tokens; a 100-token prompt takes 7 blocks. The first fits (100 + 512 <= 1,280), the second
    # too (612 <= 1,168 - 512 x 1), the third not (612 > 1,056 - 512 x 2): it starts when one of the two ends.
    est = _decode_admission_run("estimate", 80, 100, 5)
    starts = est.disaggregation.transfers["start_s"]
    assert starts[0] == starts[1] < starts[2] == min(r.finish_s for r in est.records[:2])
    on_demand = _decode_admission_run("on_demand", 80, 100, 5)
    assert len(set(on_demand.disaggregation.transfers["start_s"])) == 1


def test_a_prompt_an_estimating_decode_pool_can_never_hold_is_one_line():
    from simulator.serving.disagg import _check_decode_prealloc

    spec = make_spec(
        workload={"input_len": {"kind": "fixed", "tokens": 769}},
        scheduler={"admission": "estimate", "kv_cache": {"block_size_tokens": 16, "capacity_blocks": 80}},
    )
    with pytest.raises(ServingError, match=r"the longest prompt \(769 tokens\) \+ 512 reserved decode tokens never"):
        _check_decode_prealloc(spec.scheduler, spec.workload, "serving.disaggregation.decode")
    fits = spec.workload.model_copy(update={"input_len": spec.workload.input_len.model_copy(update={"tokens": 768})})
    _check_decode_prealloc(spec.scheduler, fits, "serving.disaggregation.decode")


def test_a_disaggregated_run_counts_each_pools_launches():
    from simulator.config.engine import CudaGraphSpec, EngineProfile, HostTimeSpec
    from simulator.report.serving_summary import launches_line, serving_summary_dict
    from simulator.serving.engine_pricing import EnginePricer
    from simulator.serving.pricing import CachedPricer

    profile = EngineProfile(
        name="test",
        version="1",
        cuda_graph=CudaGraphSpec(sizes=(1, 2, 4), source="test"),
        host=HostTimeSpec(source="test"),
        kernels={"moe_impl": "grouped", "source": "test"},
    )
    engine = CachedPricer(EnginePricer(profile, PRICER, lambda: PRICER, (1, 2, 4)))
    # one request of 8 + 4 at a time: the prefill pool runs one eager prefill of 8 tokens per request, the decode
    # pool 3 decode steps of one sequence per request, each replayed from the graph of 1
    spec = make_spec(workload={"arrivals": {"kind": "constant", "rate_per_s": 0.01}, "num_requests": 3})
    inputs = DisaggregatedInputs(
        spec,
        spec.model_copy(update={"replicas": ReplicaSpec(count=1, gpus_per_replica=1)}),
        spec.model_copy(update={"replicas": ReplicaSpec(count=1, gpus_per_replica=1)}),
        engine,
        engine,
        INSTANT,
    )
    run = simulate_disaggregated_requests(inputs, generate_requests(spec))
    d = run.disaggregation
    assert d.prefill_launches == {"eager": (3, 24, 0)} and d.decode_launches == {"graph": (9, 9, 0)}
    assert run.launches == {"eager": (3, 24, 0), "graph": (9, 9, 0)}
    assert run.host is not None and run.host[:3] == (12, 0, 0.0)  # both pools' iterations; no host time
    doc = serving_summary_dict("t", run, summarize(run), "p")
    assert launches_line(doc) == (
        "iterations launched: prefill pool 3 eagerly; decode pool 9 replayed from CUDA graphs (0.0 % padding rows)"
    )


def test_each_pool_runs_the_deployments_own_cuda_graphs():
    # serving.cuda_graph reaches both pools' engine pricers (as serving.engine does): TensorRT-LLM 1.0 without
    # padding replays only 1-32, 64, 128; with it a decode batch of 33 replays the graph of 64
    base = ["serving.engine=trtllm-1.0"]
    path = Path(__file__).resolve().parents[2] / "scenarios/mixtral_8x7b_8xh100_disagg.yaml"
    from simulator.config import load_scenario

    plain = disaggregated_inputs(load_scenario(path, base))
    padded = disaggregated_inputs(load_scenario(path, [*base, "serving.cuda_graph.padding=true"]))
    batch = (SeqWork(1, 100),) * 33
    assert plain.decode.pricer.pricer.launch(batch).kind == "eager"  # type: ignore[attr-defined]
    assert padded.decode.pricer.pricer.launch(batch) == ("graph", 33, 31)  # type: ignore[attr-defined]
    assert padded.prefill.spec.cuda_graph == padded.decode.spec.cuda_graph == padded.scenario.serving.cuda_graph
