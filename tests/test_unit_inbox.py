"""The trainer's command inbox releases commands in sequence order (no Ray)."""

from __future__ import annotations

import threading
import time

from ray_interactive.core.commands import (
    CommandRecord,
    CommandStatus,
    Evaluate,
    LoadCheckpoint,
    Pause,
    Resume,
    SetGradClip,
)
from ray_interactive.core.inbox import CommandInbox


def rec(seq: int, command=None) -> CommandRecord:  # noqa: ANN001
    return CommandRecord(command=command or Pause(), seq=seq, status=CommandStatus.ACCEPTED)


def seqs(records: list[CommandRecord]) -> list[int]:
    return [r.seq for r in records]  # type: ignore[misc]


def test_out_of_order_commands_wait_until_the_gap_is_filled() -> None:
    inbox = CommandInbox()
    inbox.put([rec(3)])
    assert inbox.has_due(0)
    assert inbox.due(0) == []  # 1 and 2 have not arrived
    inbox.put([rec(1)])
    assert seqs(inbox.due(0)) == [1]  # 3 still waits for 2
    inbox.put([rec(2)])
    assert seqs(inbox.due(0)) == [2, 3]
    assert not inbox.has_due(100)
    assert inbox.due(100) == []


def test_commands_released_together_come_in_sequence_order() -> None:
    inbox = CommandInbox()
    inbox.put([rec(4), rec(2)])
    inbox.put([rec(3), rec(1)])
    assert seqs(inbox.due(0)) == [1, 2, 3, 4]


def test_at_step_command_does_not_block_later_ones_and_fires_at_its_step() -> None:
    inbox = CommandInbox()
    inbox.put([rec(1, SetGradClip(max_norm=0.5, at_step=10)), rec(2, Resume()), rec(3, Evaluate())])
    assert seqs(inbox.due(5)) == [2, 3]
    assert inbox.due(9) == []
    assert not inbox.has_due(9) and inbox.has_due(10)  # the cheap per-step check
    due = inbox.due(10)
    assert seqs(due) == [1]
    assert isinstance(due[0].command, SetGradClip)
    assert not inbox.has_due(10**9)


def test_at_step_command_that_is_already_past_fires_immediately() -> None:
    inbox = CommandInbox()
    inbox.put([rec(1, Pause(at_step=3))])
    assert seqs(inbox.due(7)) == [1]


def test_at_step_commands_keep_their_order_across_a_branch() -> None:
    """A replay: a load at step 40 moves the run back to step 20; a command that was
    applied on the new branch at step 25 must not fire before the load."""
    inbox = CommandInbox()
    load = LoadCheckpoint(checkpoint_id="main@20", branch="b", at_step=40)
    inbox.put([rec(1, load), rec(2, SetGradClip(max_norm=0.5, at_step=25)), rec(3, Resume())])
    assert seqs(inbox.due(30)) == [3]  # 2 waits behind 1, though its step has come
    assert seqs(inbox.due(40)) == [1]  # the load ends the batch: it moves the step
    assert inbox.due(20) == []
    assert seqs(inbox.due(25)) == [2]


def test_duplicate_deliveries_below_the_frontier_are_ignored() -> None:
    inbox = CommandInbox()
    inbox.put([rec(1), rec(2)])
    assert seqs(inbox.due(0)) == [1, 2]
    inbox.put([rec(1), rec(2)])  # delivered again
    assert not inbox.has_due(0)
    assert inbox.due(0) == []
    inbox.put([rec(3)])
    assert seqs(inbox.due(0)) == [3]


def test_numbers_below_next_seq_are_ignored() -> None:
    inbox = CommandInbox(next_seq=10)
    inbox.put([rec(9)])  # below the start: ignored
    inbox.put([rec(10)])
    assert seqs(inbox.due(0)) == [10]


def test_wait_returns_when_a_command_arrives() -> None:
    inbox = CommandInbox()
    threading.Timer(0.05, lambda: inbox.put([rec(1)])).start()
    t0 = time.monotonic()
    inbox.wait(5.0)
    assert time.monotonic() - t0 < 2.0
    assert seqs(inbox.due(0)) == [1]


def test_drain_hands_on_every_command_received_in_order_due_or_not() -> None:
    inbox = CommandInbox()
    inbox.put([rec(3), rec(1, SetGradClip(max_norm=1.0, at_step=50)), rec(4)])
    assert seqs(inbox.drain()) == [1]  # 3 and 4 wait for 2: another rank must see the same order
    inbox.put([rec(2)])
    assert seqs(inbox.drain()) == [2, 3, 4]
    assert inbox.drain() == [] and not inbox.has_due(100)
