"""simulator.forking.InChild: a value computed in a forked second process is the one computed here."""

from __future__ import annotations

import os

from simulator.forking import InChild


def _double(x: int) -> int:
    return 2 * x


def _fail(x: int) -> int:
    if os.getpid() != _PARENT_PID:  # fails in the child only: the parent computes it
        raise RuntimeError("child failed")
    return x


_PARENT_PID = os.getpid()


def test_a_value_computed_in_a_second_process_is_the_one_computed_here():
    assert InChild(_double, 21).result() == 42
    assert InChild(_fail, 7).result() == 7  # the child failed: computed here instead
    pending = InChild(_double, 1)
    pending.cancel()  # not wanted: the child is stopped and reaped
    assert pending.result() == 2  # still answers, computed here


def test_the_commands_use_the_same_class():
    from simulator import commands

    assert commands.InChild is InChild
