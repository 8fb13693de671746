"""Serving engine stage, links: the ports that disaggregated serving moves KV caches over, and a fluid model
of flows sharing them max-min fairly (progressive filling, recomputed when a flow starts or ends), in SimPy.

Two flows on one port each get half its bandwidth, so two transfers started together take twice as long as
one; a flow crossing a slow port is limited there and leaves the rest of a shared port to others. A port
never idles while a flow crosses it (work conserving). Events: one per flow start or end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np
import simpy

from simulator.serving.simulate import LINK_COLUMNS


@dataclass(frozen=True)
class TransferRoute:
    """One flow of a transfer between a prefill and a decode instance: bytes per prompt token, and the link
    ports (indices into Fabric.link_names) it crosses; with sliding-window layers, their bytes per token, sent
    for at most window_tokens of the prompt (the positions they keep)."""

    bytes_per_token: float
    links: tuple[int, ...]
    window_bytes_per_token: float = 0.0
    window_tokens: int = 0

    def num_bytes(self, tokens: int) -> float:
        """Bytes this flow moves for a prompt of `tokens` tokens."""
        return self.bytes_per_token * tokens + self.window_bytes_per_token * min(tokens, self.window_tokens)


@dataclass(frozen=True)
class Fabric:
    """The link ports KV transfers use and, per (prefill instance, decode instance), the flows of one
    transfer and its latency. A port of infinite bandwidth carries a flow at once."""

    link_names: tuple[str, ...]
    link_bytes_per_s: tuple[float, ...]
    routes: dict[tuple[int, int], tuple[TransferRoute, ...]]
    latency_s: dict[tuple[int, int], float]

    @property
    def instant(self) -> bool:
        """Every transfer takes no time (infinite bandwidth, no latency): handed over at the prefill's end."""
        return all(math.isinf(b) for b in self.link_bytes_per_s) and not any(self.latency_s.values())


class _Flow:
    __slots__ = ("remaining", "total", "links", "done", "rate")

    def __init__(self, num_bytes: float, links: tuple[int, ...], done: simpy.Event) -> None:
        self.remaining = num_bytes
        self.total = num_bytes
        self.links = links
        self.done = done
        self.rate = 0.0


class LinkNetwork:
    """Fluid max-min fair sharing of link ports by flows (the rates of the active flows are recomputed when
    one starts or ends). carried_bytes and busy_s per port give the utilisation."""

    def __init__(self, env: simpy.Environment, bytes_per_s: Seq[float]) -> None:
        self.env = env
        self.capacity = list(bytes_per_s)
        self.carried_bytes = [0.0] * len(self.capacity)
        self.busy_s = [0.0] * len(self.capacity)
        self.flows: list[_Flow] = []
        self.last_s = 0.0
        self.version = 0

    def send(self, num_bytes: float, links: tuple[int, ...]) -> simpy.Event:
        """An event that succeeds when num_bytes have crossed every port in links."""
        done = self.env.event()
        if num_bytes <= 0 or not links:
            done.succeed()
            return done
        self.advance()
        self.flows.append(_Flow(num_bytes, links, done))
        self.reschedule()
        return done

    def advance(self) -> None:
        now = self.env.now
        dt = now - self.last_s
        self.last_s = now
        if dt <= 0:
            return
        busy = set()
        for f in self.flows:
            moved = min(f.rate * dt, f.remaining)
            f.remaining -= moved
            for link in f.links:
                self.carried_bytes[link] += moved
                busy.add(link)
        for link in busy:
            self.busy_s[link] += dt

    def reschedule(self) -> None:
        left = []
        for f in self.flows:
            if f.remaining <= 1e-9 * f.total:
                f.done.succeed()
            else:
                left.append(f)
        self.flows = left
        self.version += 1
        if not left:
            return
        self.share(left)
        next_s = min(f.remaining / f.rate for f in left)
        version = self.version
        self.env.timeout(next_s).callbacks.append(lambda _event: self.on_timer(version))

    def on_timer(self, version: int) -> None:
        if version != self.version:
            return  # a flow started or ended since: a newer timer is pending
        self.advance()
        for f in self.flows:  # the flows due now end now (rounding left a few bytes)
            if f.remaining <= f.rate * 1e-12 * max(1.0, self.env.now):
                f.remaining = 0.0
        self.reschedule()

    def share(self, flows: list[_Flow]) -> None:
        """Max-min fair rates by progressive filling: the port with the smallest fair share fixes the rate of
        its flows; their bandwidth is taken off their other ports; repeat."""
        residual = {}
        members: dict[int, list[_Flow]] = {}
        for f in flows:
            for link in f.links:
                residual[link] = self.capacity[link]
                members.setdefault(link, []).append(f)
        active = set(map(id, flows))
        while active:
            best, bottleneck = math.inf, -1
            for link, fs in members.items():
                n = sum(1 for f in fs if id(f) in active)
                if n and (bottleneck < 0 or residual[link] / n < best):
                    best, bottleneck = residual[link] / n, link
            for f in members[bottleneck]:
                if id(f) in active:
                    f.rate = best
                    active.discard(id(f))
                    for link in f.links:
                        residual[link] -= best
            if math.isinf(best):
                for f in flows:
                    if id(f) in active:
                        f.rate = math.inf
                break

    def link_table(self, names: Seq[str]) -> dict[str, np.ndarray]:
        """LINK_COLUMNS for the ports that carried bytes."""
        used = [i for i, b in enumerate(self.carried_bytes) if b > 0]
        columns = (
            np.array([names[i] for i in used], dtype=object),
            np.array([self.capacity[i] for i in used], dtype=float),
            np.array([self.carried_bytes[i] for i in used], dtype=float),
            np.array([self.busy_s[i] for i in used], dtype=float),
        )
        return dict(zip(LINK_COLUMNS, columns))
