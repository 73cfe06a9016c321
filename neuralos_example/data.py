"""Training data for the miniature NeuralOS: scripted sessions and the Arrow rows they become.

A *session* is a seed (the simulator's reset) plus a list of actions; replaying it in the
simulator gives the true frames. The *base* users here are random and semi-random: they wander,
open and close the home folder and the trash, open and dismiss the context menu, and only
rarely do what demo users do all the time (create a folder, open the browser and wait).

Frames travel as PNG bytes: a 64x64 desktop frame is 12 KiB raw but a few hundred bytes as PNG,
so a transition row is ~1 KiB and the buffer holds hundreds of thousands of them; decoding a
batch costs well under a millisecond next to a training step of hundreds.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from neuralos_example.simulator import (
    BASE,
    KEYS,
    Action,
    Desktop,
    Event,
    create_folder_task,
    open_browser_task,
    open_icon_task,
    random_user,
)

FREQUENT_TASKS = ("create_folder", "open_browser")  # what demo users do all the time
RARE_TASKS = ("open_home", "open_trash")  # what they seldom do (the base users do it often)
TASKS = FREQUENT_TASKS + RARE_TASKS


def transition_schema() -> pa.Schema:
    """One row per action: the true frame before and after it (PNG), the action, and where it came from."""
    return pa.schema(
        [
            pa.field("session", pa.string(), nullable=False),
            pa.field("step", pa.int32(), nullable=False),
            pa.field("task", pa.string()),  # the task the user was doing, when known
            pa.field("prev", pa.binary(), nullable=False),
            pa.field("next", pa.binary(), nullable=False),
            pa.field("x", pa.int16(), nullable=False),
            pa.field("y", pa.int16(), nullable=False),
            pa.field("event", pa.int8(), nullable=False),
            pa.field("key_index", pa.int8(), nullable=False),
        ]
    )


def encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, size: int = BASE) -> np.ndarray:
    """A uint8 (size, size, 3) frame; a clear ValueError for bytes that are not such a PNG."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several types for bad data
        raise ValueError(f"not a PNG frame: {e}") from None
    arr = np.asarray(img.convert("RGB"))
    if arr.shape != (size, size, 3):
        raise ValueError(f"frame is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
    return arr


def decode_pngs(column: pa.Array | pa.ChunkedArray, size: int = BASE) -> np.ndarray:
    return np.stack([decode_png(b, size) for b in column.to_pylist()]) if len(column) else np.zeros((0, size, size, 3), np.uint8)


@dataclass
class Session:
    """A seed and the actions taken from the simulator's reset; ``tags[i]`` names the task action i belongs to."""

    name: str
    seed: int
    actions: list[Action]
    tags: list[str | None]

    def frames(self, size: int = BASE) -> list[np.ndarray]:
        """The true frames: the first one and one after each action."""
        desk = Desktop(size, self.seed)
        return [desk.render()] + [desk.step(a) for a in self.actions]


def task_actions(task: str, rng: np.random.Generator, desktop: Desktop) -> list[Action]:
    """A scripted user doing ``task`` from the desktop's current state (the desktop is not changed)."""
    if task == "create_folder":
        return create_folder_task(rng, desktop)
    if task == "open_browser":
        return open_browser_task(rng, desktop)
    if task == "open_home":
        return open_icon_task(rng, desktop, "home")
    if task == "open_trash":
        return open_icon_task(rng, desktop, "trash")
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def _close_top(rng: np.random.Generator, desk: Desktop) -> list[Action]:
    st = desk.state
    if not st.windows:
        return []
    top = st.windows[-1]
    x, y = desk.close_button(top.kind, top.slot if top.kind == "folder" else None)
    jx, jy = (int(v) for v in rng.integers(-1, 2, size=2))
    x, y = min(max(x + jx, 0), desk.size - 1), min(max(y + jy, 0), desk.size - 1)
    return [Action.move(x, y), Action.left(x, y)]


def _menu_and_dismiss(rng: np.random.Generator, desk: Desktop) -> list[Action]:
    """Right-click somewhere, then click elsewhere, click "Refresh", or type and cancel in the dialog."""
    s = desk.size // BASE
    x, y = int(rng.integers(2 * s, desk.size - 2 * s)), int(rng.integers(7 * s, desk.size - 2 * s))
    out = [Action.move(x, y), Action.right(x, y)]
    probe = desk.clone()
    for a in out:
        probe.apply(a)
    if probe.state.menu is None:
        return out
    r = rng.random()
    if r < 0.4:  # click away
        out.append(Action.left(int(rng.integers(desk.size)), int(rng.integers(desk.size))))
    elif r < 0.7:
        out.append(Action.left(*probe.menu_item_center("refresh")))
    else:  # new folder, a few keys, cancel: the dialog is seen, a folder is not made
        cx, cy = probe.menu_item_center("new_folder")
        out += [Action.move(cx, cy), Action.left(cx, cy)]
        for k in rng.integers(len(KEYS), size=int(rng.integers(0, 4))):
            out.append(Action(cx, cy, Event.KEY, KEYS[int(k)]))
        probe2 = probe.clone()
        for a in out[2:]:
            probe2.apply(a)
        if probe2.state.dialog is not None:
            out.append(Action.left(*probe2.dialog_button_center("cancel")))
    return out


def base_session(seed: int, n_steps: int = 48, frequent_p: float = 0.025, size: int = BASE) -> Session:
    """A base-data user: episodes of wandering, opening/closing windows and dismissing menus;
    a frequent task only with probability ``frequent_p`` per episode."""
    rng = np.random.default_rng(seed)
    desk = Desktop(size, seed)
    actions: list[Action] = []
    tags: list[str | None] = []
    while len(actions) < n_steps:
        r = rng.random()
        if r < frequent_p:
            tag: str | None = str(rng.choice(FREQUENT_TASKS))
            ep = task_actions(tag, rng, desk)
        elif r < 0.3:
            tag = str(rng.choice(RARE_TASKS))
            ep = task_actions(tag, rng, desk)
        elif r < 0.5:
            tag, ep = None, _close_top(rng, desk)
        elif r < 0.7:
            tag, ep = None, _menu_and_dismiss(rng, desk)
        else:
            tag, ep = None, random_user(rng, int(rng.integers(3, 12)), size)
        for a in ep:
            if len(actions) >= n_steps:
                break
            desk.apply(a)
            actions.append(a)
            tags.append(tag)
    return Session(f"base-{seed}", seed, actions, tags)


def task_session(task: str, seed: int, warmup: int = 0, size: int = BASE) -> Session:
    """One user doing ``task`` from a fresh desktop, after ``warmup`` steps of wandering."""
    rng = np.random.default_rng(seed)
    desk = Desktop(size, seed)
    actions = random_user(rng, warmup, size) if warmup else []
    for a in actions:
        desk.apply(a)
    ep = task_actions(task, rng, desk)
    return Session(f"{task}-{seed}", seed, actions + ep, [None] * len(actions) + [task] * len(ep))


def user_session(seed: int, tasks: tuple[str, ...] = FREQUENT_TASKS, size: int = BASE) -> Session:
    """A simulated demo user's session: 1-3 frequent tasks in a row (as :class:`~neuralos_example.users.SimulatedUser`)."""
    rng = np.random.default_rng(seed)
    desk = Desktop(size, seed)
    actions, tags = [], []
    for _ in range(int(rng.integers(1, 4))):
        task = str(rng.choice(tasks))
        for a in task_actions(task, rng, desk):
            desk.apply(a)
            actions.append(a)
            tags.append(task)
    return Session(f"user-{seed}", seed, actions, tags)


def session_arrays(session: Session, size: int = BASE) -> dict[str, np.ndarray]:
    """The session's transitions as arrays: prev, next (uint8 N,S,S,3), x, y, event, key_index."""
    frames = np.stack(session.frames(size))
    a = session.actions
    return {
        "prev": frames[:-1],
        "next": frames[1:],
        "x": np.array([x.x for x in a], np.int16),
        "y": np.array([x.y for x in a], np.int16),
        "event": np.array([int(x.event) for x in a], np.int8),
        "key_index": np.array([x.key_index for x in a], np.int8),
    }


def sessions_table(sessions: Sequence[Session], size: int = BASE) -> pa.Table:
    """Transition rows (see :func:`transition_schema`) for the sessions, frames as PNG."""
    cols: dict[str, list] = {k: [] for k in transition_schema().names}
    for s in sessions:
        arr = session_arrays(s, size)
        n = len(s.actions)
        cols["session"] += [s.name] * n
        cols["step"] += list(range(n))
        cols["task"] += s.tags
        cols["prev"] += [encode_png(f) for f in arr["prev"]]
        cols["next"] += [encode_png(f) for f in arr["next"]]
        for k in ("x", "y", "event", "key_index"):
            cols[k] += arr[k].tolist()
    return pa.table(cols, schema=transition_schema())


def base_table(rows: int, seed: int = 0, steps_per_session: int = 48, size: int = BASE) -> pa.Table:
    """About ``rows`` base transitions (whole sessions of seeds ``seed``, ``seed + 1``, ...)."""
    n = max(1, -(-rows // steps_per_session))
    return sessions_table([base_session(seed + i, steps_per_session, size=size) for i in range(n)], size).slice(0, rows)


def with_history(arr: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arr`` (one session's :func:`session_arrays`) plus each transition's predecessor: the frame
    before ``prev`` and the action that led to it (``prev2``, ``x2``, ``y2``, ``event2``,
    ``key_index2``); ``has2`` is False for the first transition, which has none (its fields repeat its own)."""
    out = dict(arr)
    for k in ("prev", "x", "y", "event", "key_index"):
        v = arr[k]
        out[f"{k}2"] = np.concatenate([v[:1], v[:-1]])
    out["has2"] = np.arange(len(arr["x"])) > 0
    return out


def base_stream(seed: int, batch: int, steps_per_session: int = 48, size: int = BASE, frequent_p: float = 0.025,
                history: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches of base transitions as arrays (pretraining, no PNG round trip):
    a pool of sessions is kept and refreshed so batches mix many sessions. ``history``: with
    each transition's predecessor (:func:`with_history`), for training on the model's own frames."""
    rng = np.random.default_rng(seed)
    next_seed = seed * 1_000_003
    while True:
        chunk = [session_arrays(base_session(next_seed + i, steps_per_session, frequent_p, size), size) for i in range(16)]
        if history:
            chunk = [with_history(c) for c in chunk]
        next_seed += 16
        merged = {k: np.concatenate([c[k] for c in chunk]) for k in chunk[0]}
        order = rng.permutation(len(merged["x"]))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            yield {k: v[idx] for k, v in merged.items()}
