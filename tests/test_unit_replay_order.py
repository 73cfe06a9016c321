"""The replayer puts a session's steps back in order: replicas log independently, so a step
can reach the log before the one it follows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from neuralos_example.data import decode_png
from neuralos_example.replay import COLUMNS, MAX_HELD, Replayer
from neuralos_example.simulator import Action, Desktop, Event


def rows(session: str, seed: int, steps: list[int]) -> list[dict]:
    return [{"session": session, "seed": seed, "step": k, "time": 0.0, "x": 5 + 3 * k, "y": 20, "event": int(Event.LEFT_CLICK),
             "key_index": 0, "task": None} for k in steps]


def table(rs: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rs).select(COLUMNS)


def truth(seed: int, n: int) -> list[np.ndarray]:
    desk = Desktop(64, seed)
    frames = [desk.render()]
    for k in range(n):
        frames.append(desk.step(Action(5 + 3 * k, 20, Event.LEFT_CLICK, None)))
    return frames


def test_steps_logged_out_of_order_are_replayed_in_order_across_polls() -> None:
    r = Replayer(client=None)
    a, b = rows("a", 7, [0, 1, 2, 3, 4]), rows("b", 9, [0, 1, 2])
    first = r._replay(table([a[1], b[0], a[0], a[3], b[2]]), send=True)  # a: 1 before 0, 3 held; b: 2 held
    assert first["session"] == ["b", "a", "a"] and first["step"] == [0, 0, 1]
    second = r._replay(table([a[2], b[1], a[4]]), send=True)  # the gaps fill: the held steps follow at once
    assert list(zip(second["session"], second["step"], strict=True)) == [("a", 2), ("a", 3), ("b", 1), ("b", 2), ("a", 4)]
    frames = truth(7, 5)
    got = [(s, k, n) for s, k, n in zip(first["session"] + second["session"], first["step"] + second["step"],
                                         first["next"] + second["next"], strict=True) if s == "a"]
    for _, k, png in got:  # the true frames, as if logged in order
        assert np.array_equal(decode_png(png), frames[k + 1])
    assert r.skipped == 0


def test_a_step_logged_twice_is_skipped_and_a_gap_that_never_fills_ends_the_session() -> None:
    r = Replayer(client=None)
    a = rows("a", 1, list(range(MAX_HELD + 3)))
    out = r._replay(table([a[0], a[0]]), send=True)
    assert out["step"] == [0] and r.skipped == 1
    r._replay(table(a[2: MAX_HELD + 3]), send=True)  # step 1 never comes
    assert "a" not in r.sessions and "never logged" in r.skip_reasons[-1]
