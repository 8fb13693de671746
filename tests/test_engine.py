"""Tests for the engine stage: exact schedules of 2-4 task graphs and properties of random DAGs."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.engine import EngineInput, EngineTrace, simulate, validate_input


def make_input(
    duration_s: list[float],
    resources: list[tuple[int, ...]] | None = None,
    edges: list[tuple[int, int]] = (),
    num_resources: int = 4,
    release_s: list[float] | None = None,
) -> EngineInput:
    num_tasks = len(duration_s)
    successors: list[list[int]] = [[] for _ in range(num_tasks)]
    for i, j in edges:
        successors[i].append(j)
    return EngineInput(
        duration_s=duration_s,
        resources=resources if resources is not None else [()] * num_tasks,
        successors=successors,
        num_resources=num_resources,
        release_s=release_s,
    )


def _predecessors(inp: EngineInput) -> list[list[int]]:
    preds: list[list[int]] = [[] for _ in inp.duration_s]
    for i, succ in enumerate(inp.successors):
        for j in succ:
            preds[j].append(i)
    return preds


def reference_schedule(inp: EngineInput) -> tuple[list[float], list[float]]:
    """The scheduling rules written as plainly as possible: scan every task at every event time."""
    num_tasks = len(inp.duration_s)
    release_s = inp.release_s or [0.0] * num_tasks
    preds = _predecessors(inp)
    start_s = [math.nan] * num_tasks
    end_s = [math.nan] * num_tasks
    finished = [False] * num_tasks
    running: list[int] = []
    busy = [False] * inp.num_resources
    now_s = 0.0
    while True:
        for i in [i for i in running if end_s[i] == now_s]:
            running.remove(i)
            finished[i] = True
            for r in inp.resources[i]:
                busy[r] = False
        for i in range(num_tasks):
            ready = math.isnan(start_s[i]) and release_s[i] <= now_s and all(finished[p] for p in preds[i])
            if ready and not any(busy[r] for r in inp.resources[i]):
                start_s[i] = now_s
                end_s[i] = now_s + inp.duration_s[i]
                running.append(i)
                for r in inp.resources[i]:
                    busy[r] = True
        if any(end_s[i] == now_s for i in running):
            continue  # zero-duration tasks end now: another round at the same time
        if all(finished):
            break
        upcoming = [end_s[i] for i in running]
        upcoming += [r for i, r in enumerate(release_s) if math.isnan(start_s[i]) and r > now_s]
        assert upcoming, "reference stuck: input has a cycle"
        now_s = min(upcoming)
    return start_s, end_s


# --- exact schedules -------------------------------------------------------------------------


def test_chain_runs_back_to_back():
    trace = simulate(make_input([1.0, 2.0], edges=[(0, 1)]))
    assert trace.start_s == (0.0, 1.0)
    assert trace.end_s == (1.0, 3.0)
    assert trace.makespan_s == 3.0


def test_independent_tasks_on_different_resources_overlap():
    trace = simulate(make_input([2.0, 3.0], resources=[(0,), (1,)]))
    assert trace.start_s == (0.0, 0.0)
    assert trace.makespan_s == 3.0


def test_tasks_on_same_resource_serialise_lower_index_first():
    trace = simulate(make_input([2.0, 3.0], resources=[(0,), (0,)]))
    assert trace.start_s == (0.0, 2.0)
    assert trace.end_s == (2.0, 5.0)


def test_link_contention_doubles_transfer_time():
    # Resource 0 is the shared link; 1 and 2 are each transfer's own stream.
    trace = simulate(make_input([1.5, 1.5], resources=[(0, 1), (0, 2)]))
    assert trace.end_s == (1.5, 3.0)
    assert trace.makespan_s == 2 * 1.5


def test_multi_resource_task_waits_until_all_free():
    trace = simulate(make_input([1.0, 3.0, 1.0], resources=[(0,), (1,), (0, 1)]))
    assert trace.start_s == (0.0, 0.0, 3.0)
    assert trace.end_s[2] == 4.0


def test_lower_index_wins_when_resource_frees():
    # Both waiters become ready when task 0 ends and both need resource 0.
    trace = simulate(make_input([1.0, 2.0, 2.0], resources=[(1,), (0,), (0,)], edges=[(0, 2), (0, 1)]))
    assert trace.start_s == (0.0, 1.0, 3.0)


def test_blocked_low_index_task_does_not_block_higher_index_task():
    # Task 1 needs busy resource 0; task 2 needs only free resource 1 and starts at once.
    trace = simulate(make_input([4.0, 1.0, 1.0], resources=[(0,), (0, 1), (1,)]))
    assert trace.start_s == (0.0, 4.0, 0.0)


def test_higher_index_task_takes_resource_freed_before_lower_index_can_start():
    # At t=1 resource 1 frees; task 2 needs {0, 1} (0 busy until 3), task 3 needs {1}: task 3 runs.
    trace = simulate(make_input([3.0, 1.0, 1.0, 1.0], resources=[(0,), (1,), (0, 1), (1,)]))
    assert trace.start_s == (0.0, 0.0, 3.0, 1.0)


def test_completions_at_a_time_are_processed_before_dispatch():
    # Task 2 (needs 0 and 1) and task 3 (needs 1) wait; at t=2 both 0 and 1 free at once, so
    # the lower-index task 2 gets resource 1 although task 3 only needed 1.
    trace = simulate(make_input([2.0, 2.0, 1.0, 1.0], resources=[(0,), (1,), (0, 1), (1,)]))
    assert trace.start_s == (0.0, 0.0, 2.0, 3.0)


def test_zero_duration_task_lets_successor_start_at_same_time():
    trace = simulate(make_input([1.0, 0.0, 2.0], edges=[(0, 1), (1, 2)]))
    assert trace.start_s == (0.0, 1.0, 1.0)
    assert trace.end_s == (1.0, 1.0, 3.0)


def test_zero_duration_task_holds_its_resource_for_one_round():
    # Task 0 takes resource 0 for zero time; task 1 gets it after task 0's completion round.
    trace = simulate(make_input([0.0, 1.0], resources=[(0,), (0,)]))
    assert trace.start_s == (0.0, 0.0)
    assert trace.end_s == (0.0, 1.0)


def test_release_delays_start():
    trace = simulate(make_input([1.0, 1.0], resources=[(0,), (1,)], release_s=[0.0, 2.5]))
    assert trace.start_s == (0.0, 2.5)
    assert trace.makespan_s == 3.5


def test_release_earlier_than_predecessor_end_has_no_effect():
    trace = simulate(make_input([2.0, 1.0], edges=[(0, 1)], release_s=[0.0, 1.0]))
    assert trace.start_s == (0.0, 2.0)


def test_released_low_index_task_preempts_nothing_but_wins_next_free():
    # Task 0 is released at 1 while task 1 runs until 2 and task 2 waits: task 0 goes first.
    trace = simulate(make_input([1.0, 2.0, 1.0], resources=[(0,), (0,), (0,)], release_s=[1.0, 0.0, 0.0]))
    assert trace.start_s == (2.0, 0.0, 3.0)


def test_repeated_resource_index_counts_once():
    trace = simulate(make_input([1.0, 1.0], resources=[(0, 0), (0,)]))
    assert trace.start_s == (0.0, 1.0)


def test_completions_sharing_an_end_time_share_one_event():
    trace = simulate(make_input([1.0, 1.0], resources=[(0,), (1,)]))
    assert trace.num_events == 2  # time 0 and time 1


def test_task_without_resources_never_waits():
    trace = simulate(make_input([1.0, 1.0], resources=[(0,), ()]))
    assert trace.start_s == (0.0, 0.0)


def test_empty_input_has_zero_makespan():
    assert simulate(make_input([])) == EngineTrace((), (), 0.0, 1)


# --- errors ----------------------------------------------------------------------------------


def test_cycle_raises_naming_stuck_tasks():
    inp = make_input([1.0, 1.0, 1.0], edges=[(1, 2), (2, 1)])
    with pytest.raises(ValueError, match=r"2 of 3 tasks .* cycle.*1, 2"):
        validate_input(inp)
    with pytest.raises(ValueError, match=r"2 of 3 tasks"):
        simulate(inp)


@pytest.mark.parametrize(
    "inp, message",
    [
        (make_input([1.0, -1.0]), r"duration_s\[1\]"),
        (make_input([math.nan]), r"duration_s\[0\]"),
        (make_input([math.inf]), r"duration_s\[0\]"),
        (make_input([1.0], resources=[(4,)], num_resources=4), r"resources\[0\] contains 4"),
        (make_input([1.0], resources=[(-1,)]), r"resources\[0\] contains -1"),
        (make_input([1.0], edges=[(0, 1)]), r"successors\[0\] contains 1"),
        (make_input([1.0], release_s=[-1.0]), r"release_s\[0\]"),
        (make_input([1.0], release_s=[1.0, 2.0]), r"len\(release_s\)"),
    ],
)
def test_bad_input_raises(inp, message):
    with pytest.raises(ValueError, match=message):
        validate_input(inp)
    with pytest.raises(ValueError, match=message):
        simulate(inp)


def test_valid_input_passes_validation():
    validate_input(make_input([1.0, 0.0], resources=[(0, 1), ()], edges=[(0, 1)]))


# --- random graphs ---------------------------------------------------------------------------


def random_input(rng: random.Random, num_tasks: int, num_resources: int, edge_probability: float = 0.15) -> EngineInput:
    return make_input(
        duration_s=[rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 0.1, 0.7]) for _ in range(num_tasks)],
        resources=[
            tuple(rng.sample(range(num_resources), rng.randint(0, min(3, num_resources)))) for _ in range(num_tasks)
        ],
        edges=[(i, j) for j in range(num_tasks) for i in range(max(0, j - 12), j) if rng.random() < edge_probability],
        num_resources=num_resources,
        release_s=[rng.choice([0.0, 0.0, 1.0, 2.5, 0.3]) for _ in range(num_tasks)],
    )


def test_same_input_gives_identical_trace():
    inp = random_input(random.Random(7), 60, 5)
    assert simulate(inp) == simulate(inp)


def test_matches_reference_on_many_random_graphs():
    # Sparse graphs with many ready tasks exercise waiting classes, re-keying and zero durations.
    rng = random.Random(1)
    for _ in range(200):
        inp = random_input(rng, rng.randint(1, 60), rng.randint(1, 5), edge_probability=rng.choice([0.0, 0.03, 0.15]))
        trace = simulate(inp)
        assert (list(trace.start_s), list(trace.end_s)) == reference_schedule(inp)


@st.composite
def dags(draw):
    num_tasks = draw(st.integers(1, 10))
    num_resources = draw(st.integers(1, 4))
    duration_s = draw(st.lists(st.floats(0.0, 10.0), min_size=num_tasks, max_size=num_tasks))
    resources = draw(
        st.lists(
            st.sets(st.integers(0, num_resources - 1), max_size=3).map(lambda s: tuple(sorted(s))),
            min_size=num_tasks,
            max_size=num_tasks,
        )
    )
    edges = draw(
        st.lists(
            st.tuples(st.integers(0, num_tasks - 1), st.integers(0, num_tasks - 1)).filter(lambda e: e[0] < e[1]),
            max_size=15,
            unique=True,
        )
    )
    release_s = draw(st.none() | st.lists(st.sampled_from([0.0, 1.0, 2.5]), min_size=num_tasks, max_size=num_tasks))
    return make_input(duration_s, resources, edges, num_resources, release_s)


@settings(max_examples=300, deadline=None)
@given(dags())
def test_schedule_properties(inp):
    trace = simulate(inp)
    num_tasks = len(inp.duration_s)
    release_s = inp.release_s or [0.0] * num_tasks
    preds = _predecessors(inp)
    for i in range(num_tasks):
        assert trace.end_s[i] == trace.start_s[i] + inp.duration_s[i]
        assert trace.start_s[i] >= release_s[i]
        assert all(trace.start_s[i] >= trace.end_s[p] for p in preds[i])
        if not preds[i] and not any(
            r in inp.resources[j] for r in inp.resources[i] for j in range(num_tasks) if j != i
        ):
            assert trace.start_s[i] == release_s[i]
    for i in range(num_tasks):
        for j in range(i + 1, num_tasks):
            overlap = trace.start_s[i] < trace.end_s[j] and trace.start_s[j] < trace.end_s[i]
            if overlap:
                assert not set(inp.resources[i]) & set(inp.resources[j])
    longest_s = [0.0] * num_tasks
    for i in range(num_tasks):  # edges go i -> j with i < j, so index order is topological
        longest_s[i] += inp.duration_s[i]
        for j in inp.successors[i]:
            longest_s[j] = max(longest_s[j], longest_s[i])
    assert trace.makespan_s >= max(longest_s) * (1 - 1e-12)
    if inp.release_s is None:
        assert trace.makespan_s <= sum(inp.duration_s) * (1 + 1e-12)
    assert (list(trace.start_s), list(trace.end_s)) == reference_schedule(inp)
