"""Serving engine stage: vLLM V1's data-parallel load balancer (router vllm_dp), the rule by which `vllm serve
--data-parallel-size N` sends each request to one of its N engines.

From vLLM's code (0.11, `vllm/v1/engine/core_client.py` DPLBAsyncMPClient.get_core_engine_for_request and
`vllm/v1/engine/coordinator.py` DPCoordinator):

- the front end keeps a (waiting, running) count per engine and sends a request to the engine with the lowest
  score `waiting * 4 + running`, ties to the first from its start index (0 with one API server), then adds one
  to that engine's waiting count itself ("for better balancing between stats updates from the coordinator");
- the engines publish their scheduler's counts after a step that changed them; the coordinator passes them on
  to the front end every `stats_update_interval_ms` (100) while they change, and every 5 s when they do not. A
  publication replaces the front end's counts wholesale, its own additions included.

Only MoE models run this way: vLLM runs the data-parallel ranks of a dense model as independent engines
(`run_engine_core`: "Non-MoE DP ranks are completely independent, so treat like DP=1") with no coordinator, so
the counts are never published and the front end's additions alone spread the requests: round robin. moesim's
`vllm-v1` profile therefore makes vllm_dp the router of a lockstep group only (scheduler_defaults.lockstep_router).

Not modelled: the coordinator's 50 ms wait for a lockstep group's step counts (`min_timeout`), the inter-process
transport, more than one API server.
"""

from __future__ import annotations

import math
from collections import deque

#: vLLM's score weights a waiting request four times a running one (core_client.py).
WAITING_WEIGHT = 4
#: The coordinator's publication period while the counts change (stats_update_interval_ms = 100) and while they
#: do not (5,000 ms), coordinator.py.
PUBLISH_INTERVAL_S = 0.1
UNCHANGED_PUBLISH_INTERVAL_S = 5.0


class VllmDpRouter:
    """The front end's view of each engine's counts and its choice, one per deployment.

    `publish(replica, now_s, waiting, running)` is what an engine reports after a step; `choose(now_s)` routes one
    request arriving at now_s. Publications reach the front end at the coordinator's ticks, multiples of
    interval_s: the counts it sees from tick t on are each engine's last report at or before t."""

    def __init__(
        self,
        replicas: int,
        interval_s: float = PUBLISH_INTERVAL_S,
        unchanged_interval_s: float = UNCHANGED_PUBLISH_INTERVAL_S,
    ) -> None:
        self.interval_s = interval_s
        self.unchanged_interval_s = unchanged_interval_s
        # per replica: its reports (time, waiting, running), oldest first; the first stands for "before any"
        self.reports: list[deque[tuple[float, int, int]]] = [deque([(-math.inf, 0, 0)]) for _ in range(replicas)]
        self.published: list[tuple[int, int]] = [(0, 0)] * replicas  # the coordinator's last publication
        self.published_tick = -1  # the tick (an integer count of intervals) it was sent at
        self.counts = [[0, 0] for _ in range(replicas)]  # the front end's: [waiting, running] per engine
        self.seen_tick = -1

    def publish(self, replica: int, now_s: float, waiting: int, running: int) -> None:
        """Engine `replica`'s counts after a step ending at now_s (a report equal to its last is not sent)."""
        reports = self.reports[replica]
        last = reports[-1]
        if last[1] != waiting or last[2] != running:
            reports.append((now_s, waiting, running))

    def catch_up(self, now_s: float) -> None:
        """Apply the coordinator's publication at the last tick at or before now_s, if it sent one: the counts
        changed since its last, or unchanged_interval_s has passed."""
        tick = math.floor(now_s / self.interval_s)
        if tick <= self.seen_tick:
            return
        self.seen_tick = tick
        tick_s = tick * self.interval_s
        snapshot = []
        for reports in self.reports:
            while len(reports) > 1 and reports[1][0] <= tick_s:  # keep the last report at or before the tick
                reports.popleft()
            snapshot.append((reports[0][1], reports[0][2]))
        stale = (tick - self.published_tick) * self.interval_s >= self.unchanged_interval_s
        if snapshot != self.published or stale:
            self.published = snapshot
            self.published_tick = tick
            self.counts = [[w, r] for w, r in snapshot]

    def choose(self, now_s: float) -> int:
        """The engine a request arriving at now_s goes to (DPLBAsyncMPClient.get_core_engine_for_request)."""
        self.catch_up(now_s)
        counts = self.counts
        best, best_score = 0, math.inf
        for i, (waiting, running) in enumerate(counts):
            score = waiting * WAITING_WEIGHT + running
            if score < best_score:
                best, best_score = i, score
        counts[best][0] += 1
        return best
