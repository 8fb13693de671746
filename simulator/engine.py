"""Engine stage: runs a DAG of abstract tasks on exclusive resources with SimPy; returns a trace.

The engine knows nothing about operators or hardware: a task is a duration, the resources (plain
indices) it holds exclusively while it runs, and its successor tasks. Scheduling is greedy,
non-preemptive list scheduling with the task index as priority (lower index wins):

* A task is *ready* once all its predecessors have ended and the clock has reached its release time.
* At each event time the engine first processes every completion at that time (freeing resources,
  counting down successors' predecessors), then makes one pass over the ready tasks in increasing
  index order and starts each one whose resources are all free at that moment. A blocked
  lower-index task does not block a higher-index task whose resources are free. One pass is a
  fixpoint, because resources only become busy during a pass.
* A zero-duration task ends when it starts; its completion is processed right after the pass that
  started it, followed by another pass at the same time, as for a SimPy timeout of zero delay.

SimPy drives the clock with one event per distinct completion or release time, not one process per
task: completions sharing an end time share an event, whose callback processes them and then
makes the pass. End times are computed as start + duration, exactly as SimPy adds a delay to its
clock, so equal times compare equal.

Waiting is indexed, not scanned. Ready tasks that need the same resource set form a *class* with a
min-heap of its tasks. A class whose head (lowest) task cannot start is parked on one busy
resource: the one whose holder ends last, since the class cannot start earlier. When a resource
frees, its parked classes are examined in head order until one could start; blocked ones move to
another busy resource. Each pass merges these candidates and newly ready tasks in one heap, so
tasks are tried in global index order without touching classes whose resources stay busy.
With N tasks, E edges, K resource references and W class examinations (at most the number of
classes per resource free, in practice a few), a run costs O((N + E + K + W) log N) time and
O(N + E + K) memory.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, islice

import simpy

__all__ = ["EngineInput", "EngineTrace", "simulate", "validate_input"]

# Where a class of tasks waits, besides "parked on resource r >= 0".
_IDLE = -1
_CANDIDATE = -2

# How many unfinished task ids an error message lists.
_MAX_IDS_IN_ERROR = 5


@dataclass(frozen=True)
class EngineInput:
    """A DAG of abstract tasks and the resources they hold.

    Attributes:
        duration_s: Per task, how long it holds its resources; finite and >= 0.
        resources: Per task, indices in [0, num_resources) of the resources it holds exclusively
            for its whole duration; may be empty. Duplicates are ignored.
        successors: Per task, indices of the tasks that may only start after it ends.
        num_resources: Number of resources.
        release_s: Optional per-task earliest start time, finite and >= 0; None means all 0.
    """

    duration_s: Sequence[float]
    resources: Sequence[tuple[int, ...]]
    successors: Sequence[Sequence[int]]
    num_resources: int
    release_s: Sequence[float] | None = None


@dataclass(frozen=True)
class EngineTrace:
    """When each task ran.

    Attributes:
        start_s: Per task, the time it started.
        end_s: Per task, the time it ended (start_s + duration_s).
        makespan_s: Latest end time; 0 for an empty input.
        num_events: SimPy events processed (one per distinct completion or release time, plus
            one at time 0).
    """

    start_s: tuple[float, ...]
    end_s: tuple[float, ...]
    makespan_s: float
    num_events: int


def _first_bad_time(values: Sequence[float]) -> int | None:
    """Returns the index of the first value that is NaN, infinite or negative, else None."""
    # Builtin min/max and sum clear the common case quickly: NaN defeats comparisons but makes the
    # sum NaN (an overflowing sum of finite values only sends it to the slow path).
    if len(values) == 0:
        return None
    if min(values) >= 0.0 and sum(values) < math.inf:
        return None
    for i, v in enumerate(values):
        if not (0.0 <= v < math.inf):
            return i
    return None


def _check_values(inp: EngineInput) -> None:
    """Raises ValueError on malformed sizes, times or indices (everything but cycles)."""
    num_tasks = len(inp.duration_s)
    if inp.num_resources < 0:
        raise ValueError(f"num_resources = {inp.num_resources} must be >= 0")
    for name, seq in (("resources", inp.resources), ("successors", inp.successors), ("release_s", inp.release_s)):
        if seq is not None and len(seq) != num_tasks:
            raise ValueError(f"len({name}) = {len(seq)} must equal len(duration_s) = {num_tasks}")
    bad = _first_bad_time(inp.duration_s)
    if bad is not None:
        raise ValueError(f"duration_s[{bad}] = {inp.duration_s[bad]!r} must be finite and >= 0")
    if inp.release_s is not None:
        bad = _first_bad_time(inp.release_s)
        if bad is not None:
            raise ValueError(f"release_s[{bad}] = {inp.release_s[bad]!r} must be finite and >= 0")
    try:  # each distinct resource tuple once (callers repeat a few)
        distinct_res = set(inp.resources)
    except TypeError:  # lists
        distinct_res = {tuple(res) for res in inp.resources}
    flat_res = list(chain.from_iterable(distinct_res))
    if flat_res and (min(flat_res) < 0 or max(flat_res) >= inp.num_resources):
        for i, res in enumerate(inp.resources):
            for r in res:
                if not 0 <= r < inp.num_resources:
                    raise ValueError(f"resources[{i}] contains {r}, outside [0, num_resources = {inp.num_resources})")
    flat_succ = list(chain.from_iterable(inp.successors))
    if flat_succ and (min(flat_succ) < 0 or max(flat_succ) >= num_tasks):
        for i, succ in enumerate(inp.successors):
            for j in succ:
                if not 0 <= j < num_tasks:
                    raise ValueError(f"successors[{i}] contains {j}, outside [0, num_tasks = {num_tasks})")


def _unfinished_error(unfinished: list[int], num_tasks: int) -> ValueError:
    """Builds the error for tasks that never became ready: how many, and the first few ids."""
    ids = ", ".join(str(i) for i in islice(unfinished, _MAX_IDS_IN_ERROR))
    more = ", ..." if len(unfinished) > _MAX_IDS_IN_ERROR else ""
    return ValueError(
        f"{len(unfinished)} of {num_tasks} tasks can never run (dependency cycle); e.g. tasks {ids}{more}"
    )


def validate_input(inp: EngineInput) -> None:
    """Checks an EngineInput, including that its successor graph is acyclic.

    Args:
        inp: The input to check.

    Raises:
        ValueError: On mismatched lengths, negative/NaN/infinite times, out-of-range resource or
            successor indices, or a cycle (naming how many tasks could not run and a few ids).
    """
    _check_values(inp)
    num_tasks = len(inp.duration_s)
    num_preds = _count_predecessors(inp.successors, num_tasks)
    # Kahn's algorithm: whatever never reaches zero predecessors sits on or behind a cycle.
    stack = [i for i in range(num_tasks) if num_preds[i] == 0]
    num_done = 0
    while stack:
        i = stack.pop()
        num_done += 1
        for j in inp.successors[i]:
            num_preds[j] -= 1
            if num_preds[j] == 0:
                stack.append(j)
    if num_done != num_tasks:
        raise _unfinished_error([i for i in range(num_tasks) if num_preds[i] > 0], num_tasks)


def _count_predecessors(successors: Sequence[Sequence[int]], num_tasks: int) -> list[int]:
    """Returns each task's number of incoming edges (a repeated edge counts twice)."""
    num_preds = [0] * num_tasks
    for succ in successors:
        for j in succ:
            num_preds[j] += 1
    return num_preds


def _resource_classes(
    resources: Sequence[Sequence[int]],
) -> tuple[list[tuple[int, ...]], list[int]]:
    """Groups tasks by resource set: returns each class's sorted resources and each task's class.

    Sorting and deduplicating makes equal sets one class and keeps a repeated index from freeing a
    resource twice.
    """
    class_of_set: dict[tuple[int, ...], int] = {}
    # Callers repeat the same few tuples, so look up the tuple as given before normalising it, and
    # the very object before that (by id, no hashing of its items; `alive` holds every object
    # whose id is a key, so that no other object can take that id).
    class_of_given: dict[tuple[int, ...], int] = {}
    class_of_id: dict[int, int] = {}
    alive: list = []
    class_res: list[tuple[int, ...]] = []
    task_class: list[int] = []
    for given in resources:
        c = class_of_id.get(id(given))
        if c is None:
            res = tuple(given)
            c = class_of_given.get(res)
            if c is None:
                key = tuple(sorted(set(res)))
                c = class_of_set.get(key)
                if c is None:
                    c = class_of_set[key] = len(class_res)
                    class_res.append(key)
                class_of_given[res] = c
            class_of_id[id(given)] = c
            alive.append(given)
        task_class.append(c)
    return class_res, task_class


def simulate(inp: EngineInput) -> EngineTrace:
    """Runs greedy list scheduling of the task DAG (see the module docstring for the rules).

    Assumes task index is priority: lower index wins every tie. Deterministic: the result depends
    only on the input values.

    Args:
        inp: Tasks, their resources and dependencies.

    Returns:
        Start and end time of every task, the makespan and the number of SimPy events.

    Raises:
        ValueError: On malformed input, or if some tasks never run because of a cycle.
    """
    _check_values(inp)
    num_tasks = len(inp.duration_s)
    duration_s = [float(d) for d in inp.duration_s]
    successors = inp.successors
    num_preds = _count_predecessors(successors, num_tasks)
    class_res, task_class = _resource_classes(inp.resources)
    task_res = [class_res[c] for c in task_class]
    num_classes = len(class_res)
    solo = [res[0] if len(res) == 1 else -1 for res in class_res]  # a class's only resource, or -1
    # Per class: min-heap of its ready, unstarted tasks, and where the class waits: _IDLE (no
    # tasks), _CANDIDATE (in this pass's candidate heap) or r >= 0 (parked on busy resource r).
    class_tasks: list[list[int]] = [[] for _ in range(num_classes)]
    where = [_IDLE] * num_classes
    # Per class in the candidate heap: the freed resource whose waiters it was taken from, or -1.
    came_from = [-1] * num_classes
    # Per resource: end time of the task holding it, or -1 when free; and a min-heap of parked
    # classes. Heap entries name a class by its head (lowest) task, so heaps compare plain ints;
    # an entry is stale, and skipped, once the class moved or its head changed.
    busy_until_s = [-1.0] * inp.num_resources
    waiters: list[list[int]] = [[] for _ in range(inp.num_resources)]
    candidates: list[int] = []

    start_s = [0.0] * num_tasks
    end_s = [0.0] * num_tasks

    env = simpy.Environment()
    # Pending SimPy tick per time. Entries i >= 0 are completions of task i; ~i < 0 are releases
    # of task i.
    ticks: dict[float, list[int]] = {}
    num_finished = 0
    num_events = 0
    timeout = env.timeout
    heappush = heapq.heappush
    heappop = heapq.heappop

    def schedule_tick(time_s: float, delay_s: float) -> list[int]:
        entries: list[int] = []
        ticks[time_s] = entries
        timeout(delay_s, entries).callbacks.append(on_tick)
        return entries

    def busiest(res: tuple[int, ...]) -> int:
        """The busy resource whose holder ends last, or -1 when all are free. A blocked class
        parks there: by then the others have freed too, so it is rarely woken only to be
        blocked again."""
        wait_on = -1
        latest_s = -1.0
        for r in res:
            held_until_s = busy_until_s[r]
            if held_until_s > latest_s:
                latest_s = held_until_s
                wait_on = r
        return wait_on

    def pull(
        r: int,
        waiters=waiters,
        heappop=heappop,
        heappush=heappush,
        task_class=task_class,
        where=where,
        class_tasks=class_tasks,
        solo=solo,
        busy_until_s=busy_until_s,
        class_res=class_res,
        came_from=came_from,
        candidates=candidates,
    ) -> None:
        """Moves the lowest class parked on freed resource r that could start into the candidates.

        Classes found blocked on another resource are re-parked there on the way, which saves
        them a trip through the candidate heap; they would be blocked there too, since
        resources only become busier during a pass.
        """
        parked = waiters[r]
        while parked:
            head = heappop(parked)
            c = task_class[head]
            if where[c] != r or class_tasks[c][0] != head:
                continue
            r1 = solo[c]
            if r1 >= 0:
                wait_on = r1 if busy_until_s[r1] > -1.0 else -1
            else:
                wait_on = busiest(class_res[c])
            if wait_on >= 0:
                where[c] = wait_on
                heappush(waiters[wait_on], head)
            else:
                where[c] = _CANDIDATE
                came_from[c] = r
                heappush(candidates, head)
                return

    # The callback binds what it uses as default arguments: local lookups, the fastest kind (this
    # runs once per event).
    def on_tick(
        event: simpy.Event,
        env=env,
        ticks=ticks,
        task_res=task_res,
        busy_until_s=busy_until_s,
        waiters=waiters,
        successors=successors,
        num_preds=num_preds,
        task_class=task_class,
        class_tasks=class_tasks,
        where=where,
        came_from=came_from,
        candidates=candidates,
        heappush=heappush,
        heappop=heappop,
        pull=pull,
        class_res=class_res,
        solo=solo,
        busiest=busiest,
        duration_s=duration_s,
        start_s=start_s,
        end_s=end_s,
        timeout=timeout,
    ) -> None:
        nonlocal num_finished, num_events
        num_events += 1
        now_s = env.now
        entries = ticks.pop(now_s)
        while True:
            # Phase 1: every completion and release at now_s.
            freed = []
            for i in entries:
                if i >= 0:
                    num_finished += 1
                    for r in task_res[i]:
                        busy_until_s[r] = -1.0
                        if waiters[r]:
                            freed.append(r)
                    counted_down = successors[i]
                else:
                    counted_down = (~i,)
                for j in counted_down:
                    num_preds[j] -= 1
                    if num_preds[j]:
                        continue
                    c = task_class[j]
                    queued = class_tasks[c]
                    if not queued:
                        queued.append(j)
                        where[c] = _CANDIDATE
                        came_from[c] = -1
                        heappush(candidates, j)
                    elif j < queued[0]:
                        # The class's head changed: re-key it where it waits.
                        heappush(queued, j)
                        w = where[c]
                        heappush(candidates if w == _CANDIDATE else waiters[w], j)
                    else:
                        heappush(queued, j)
            # Pull only after all arrivals, so each pulled class is its resource's lowest.
            for r in freed:
                pull(r)
            # Phase 2: one pass over ready classes in order of their lowest task.
            zero: list[int] = []
            while candidates:
                head = heappop(candidates)
                c = task_class[head]
                queued = class_tasks[c]
                if where[c] != _CANDIDATE or queued[0] != head:
                    continue
                res = class_res[c]
                r1 = solo[c]
                if r1 >= 0:  # one resource (most tasks): busiest() inlined
                    wait_on = r1 if busy_until_s[r1] > -1.0 else -1
                else:
                    wait_on = busiest(res)
                if wait_on >= 0:
                    where[c] = wait_on
                    heappush(waiters[wait_on], head)
                else:
                    heappop(queued)
                    task_end_s = now_s + duration_s[head]
                    for r in res:
                        busy_until_s[r] = task_end_s
                    start_s[head] = now_s
                    end_s[head] = task_end_s
                    if task_end_s == now_s:
                        zero.append(head)
                    else:
                        pending = ticks.get(task_end_s)
                        if pending is None:
                            # Inlined schedule_tick: this is the hottest line of the engine.
                            ticks[task_end_s] = pending = [head]
                            timeout(duration_s[head], pending).callbacks.append(on_tick)
                        else:
                            pending.append(head)
                    if not queued:
                        where[c] = _IDLE
                    elif res:
                        where[c] = res[0]
                        heappush(waiters[res[0]], queued[0])
                    else:
                        # No resources, so never blocked: the next task is a candidate too.
                        heappush(candidates, queued[0])
                source = came_from[c]
                if source >= 0 and busy_until_s[source] < 0.0:
                    # The resource this class was taken from is still free: its next parked
                    # class is the next candidate from it.
                    pull(source)
            if not zero:
                return
            # Zero-duration tasks end now: process their completions, then pass again.
            entries = zero

    # A release is one more predecessor, counted down by a tick at the release time. Tasks
    # without predecessors get one at time 0, so every task becomes ready the same way.
    schedule_tick(0.0, 0.0)
    release_s = [0.0] * num_tasks if inp.release_s is None else inp.release_s
    for i in range(num_tasks):
        task_release_s = float(release_s[i])
        if task_release_s > 0.0 or num_preds[i] == 0:
            num_preds[i] += 1
            entries = ticks.get(task_release_s)
            if entries is None:
                # Scheduled at time 0 with that delay, so SimPy's clock lands exactly on it.
                entries = schedule_tick(task_release_s, task_release_s)
            entries.append(~i)

    try:
        env.run()
    finally:
        # on_tick schedules itself, so it sits in a reference cycle with every list it closes
        # over (the successor lists alone are one per task): unbound, they go back by reference
        # counting at once instead of waiting for (and costing) a cyclic-GC pass.
        on_tick = None  # type: ignore[assignment]  # noqa: F841

    if num_finished != num_tasks:
        raise _unfinished_error([i for i in range(num_tasks) if num_preds[i] > 0], num_tasks)
    return EngineTrace(
        start_s=tuple(start_s),
        end_s=tuple(end_s),
        makespan_s=max(end_s, default=0.0),
        num_events=num_events,
    )
