"""Measuring a next-frame model: teacher-forced PSNR and closed-loop task success.

*Closed loop* is how the demo runs: the model starts from the desktop's first frame and draws
every next frame from its own previous one, given a held-out session's actions. The task
succeeded if the last frame shows the outcome. Deciding that from pixels is done by the
simulator itself: the final true state is rendered as it looks with the task done (every window
position jitter and page layout the simulator could have drawn) and as it looks without it (the
folder missing, the page still loading at any progress, the window not open); the model's frame
succeeds if its nearest rendering (mean absolute error over the frame) is one of the done ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from neuralos_example.data import (
    FREQUENT_TASKS,
    RARE_TASKS,
    TASKS,
    Session,
    base_session,
    session_arrays,
    task_session,
    user_session,
)
from neuralos_example.model import (
    DEFAULT_STEPS,
    FrameBatch,
    FramePredictor,
    NextFrameModel,
    sample_next,
    tensor_to_frames,
)
from neuralos_example.simulator import (
    BASE,
    JITTER,
    N_PAGES,
    WINDOW_GEOMETRY,
    Desktop,
    DesktopState,
    palette,
    render_state,
)

TASK_WINDOW = {"open_browser": "browser", "open_home": "files", "open_trash": "trash"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 frames (mean over frames; identical frames count as 60 dB)."""
    err = ((a.astype(np.float32) - b.astype(np.float32)) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean([60.0 if e == 0 else min(60.0, 10 * math.log10(255.0**2 / e)) for e in err]))


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _window_variants(state: DesktopState, kind: str) -> tuple[int, list[DesktopState]]:
    """The index of the topmost ``kind`` window and the state with it at every jittered position."""
    idx = max(i for i, w in enumerate(state.windows) if w.kind == kind)
    win = state.windows[idx]
    s = state.size // BASE
    bx, by = WINDOW_GEOMETRY[kind][:2]
    out = []
    for dx in range(-JITTER, JITTER + 1):
        for dy in range(-JITTER, JITTER + 1):
            st = state.copy()
            st.windows[idx] = dataclasses.replace(win, x=(bx + dx) * s, y=(by + dy) * s)
            out.append(st)
    return idx, out


def outcome_renderings(task: str, final: DesktopState) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """(frames with the task done, frames without), or None if the true session did not finish the task."""
    if task == "create_folder":
        if not final.folders:
            return None
        without = final.copy()
        without.folders = without.folders[:-1]
        typed = without.copy()  # the name typed but not confirmed: the dialog still open
        typed.dialog = final.folders[-1].name
        return [render_state(final)], [render_state(without), render_state(typed)]
    kind = TASK_WINDOW[task]
    if not any(w.kind == kind for w in final.windows):
        return None
    idx, variants = _window_variants(final, kind)
    absent = final.copy()
    del absent.windows[idx]
    fail = [render_state(absent)]
    for other in TASK_WINDOW.values():  # the wrong window opened instead, wherever it landed
        if other != kind:
            wrong = final.copy()
            wrong.windows[idx] = dataclasses.replace(final.windows[idx], kind=other, w=WINDOW_GEOMETRY[other][2] * (final.size // BASE),
                                                     h=WINDOW_GEOMETRY[other][3] * (final.size // BASE), progress=0, load_steps=0)
            fail += [render_state(st) for st in _window_variants(wrong, other)[1]]
    done: list[np.ndarray] = []
    if task == "open_browser":
        if not final.windows[idx].loaded:
            return None
        for st in variants:
            w = st.windows[idx]
            for page in range(N_PAGES):
                st2 = st.copy()
                st2.windows[idx] = dataclasses.replace(w, page=page)
                done.append(render_state(st2))
            for progress in range(w.load_steps):  # still loading, at any point of the bar
                st2 = st.copy()
                st2.windows[idx] = dataclasses.replace(w, progress=progress)
                fail.append(render_state(st2))
    else:
        done = [render_state(st) for st in variants]
    return done, fail


def judge(frame: np.ndarray, task: str, final: DesktopState) -> dict[str, Any]:
    """Whether ``frame`` shows ``task`` done, given the true final state."""
    r = outcome_renderings(task, final)
    if r is None:
        raise ValueError(f"the true session did not complete {task!r}; it cannot judge a rollout")
    done, fail = r
    d = min(_mae(frame, f) for f in done)
    f = min(_mae(frame, g) for g in fail)
    return {"success": d < f, "err_done": d, "err_not_done": f}


@torch.no_grad()
def arrays_psnr(model: NextFrameModel, arr: dict[str, np.ndarray], steps: int = DEFAULT_STEPS, seed: int = 0) -> float:
    """Next-frame PSNR with the true previous frame and action as input (arrays of :func:`session_arrays`)."""
    dev = next(model.parameters()).device
    b = FrameBatch.from_arrays(arr["prev"], arr["next"], arr["x"], arr["y"], arr["event"], arr["key_index"], model.config, dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = [tensor_to_frames(sample_next(model, b.prev[i : i + 64], b.cursor[i : i + 64], b.cls[i : i + 64], steps, g)) for i in range(0, len(b), 64)]
    model.train(was_training)
    return psnr(np.concatenate(out), arr["next"])


def teacher_forced_psnr(model: NextFrameModel, sessions: Sequence[Session], steps: int = DEFAULT_STEPS, seed: int = 0) -> float:
    """Next-frame PSNR over the sessions' transitions, true previous frame and action in."""
    parts = [session_arrays(s) for s in sessions]
    return arrays_psnr(model, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, steps, seed)


def off_palette_fraction(frames: np.ndarray, tol: int = 8) -> float:
    """The fraction of pixels of uint8 frames (..., 3) farther than ``tol`` levels (in some
    channel) from every colour the desktop draws: noise, since the desktop draws no other colour."""
    pal = palette().astype(np.int16)
    flat = frames.reshape(-1, 3).astype(np.int16)
    near = np.zeros(len(flat), bool)
    for c in pal:  # 93 colours: a loop over them keeps the memory at one frame's size
        near |= (np.abs(flat - c) <= tol).all(axis=1)
    return float(1.0 - near.mean())


def rollout(model: NextFrameModel, session: Session, steps: int = DEFAULT_STEPS, seed: int = 0, snap: bool = True) -> list[np.ndarray]:
    """The model's frames for the session's actions, each from its own previous frame."""
    pred = FramePredictor(model, steps, seed, snap=snap)
    frame = Desktop(model.config.size, session.seed).render()
    frames = [frame]
    for a in session.actions:
        frame = pred.predict(frame, a)
        frames.append(frame)
    return frames


def closed_loop(model: NextFrameModel, task: str, sessions: Sequence[Session], steps: int = DEFAULT_STEPS, seed: int = 0) -> dict[str, Any]:
    """Task success rate and rollout PSNR (frames vs true frames) over sessions of ``task``."""
    wins, psnrs = [], []
    for i, s in enumerate(sessions):
        frames = rollout(model, s, steps, seed + i)
        desk = Desktop(model.config.size, s.seed)
        true = [desk.render()] + [desk.step(a) for a in s.actions]
        wins.append(judge(frames[-1], task, desk.state)["success"])
        psnrs.append(psnr(np.stack(frames[1:]), np.stack(true[1:])))
    return {"success": float(np.mean(wins)), "rollout_psnr": float(np.mean(psnrs)), "n": len(sessions)}


def heldout(task: str, n: int, seed: int = 700_000) -> list[Session]:
    """``n`` sessions of ``task`` whose true outcome is a done task (seeds never used in training)."""
    out: list[Session] = []
    i = 0
    while len(out) < n:
        s = task_session(task, seed + 1000 * TASKS.index(task) + i, warmup=int(i % 4))
        desk = Desktop(BASE, s.seed)
        for a in s.actions:
            desk.apply(a)
        if outcome_renderings(task, desk.state) is not None:
            out.append(s)
        i += 1
    return out


def evaluate_tasks(model: NextFrameModel, sets: dict[str, list[Session]], steps: int = DEFAULT_STEPS) -> dict[str, float]:
    """Per task (``<task>/success``, ``<task>/rollout_psnr``, ``<task>/psnr`` teacher-forced) and per
    kind (``frequent/success``, ``rare/success``): what the demo's evaluation logs and plots."""
    out: dict[str, float] = {}
    for task, sessions in sets.items():
        r = closed_loop(model, task, sessions, steps)
        out[f"{task}/success"] = r["success"]
        out[f"{task}/rollout_psnr"] = r["rollout_psnr"]
        out[f"{task}/psnr"] = teacher_forced_psnr(model, sessions, steps)
    for kind, tasks in (("frequent", FREQUENT_TASKS), ("rare", RARE_TASKS)):
        wins = [out[f"{t}/success"] * len(sets[t]) for t in tasks if t in sets]
        if wins:
            out[f"{kind}/success"] = sum(wins) / sum(len(sets[t]) for t in tasks if t in sets)
    return out


def probe_sessions(n: int = 8, actions: int = 20, seed: int = 990_000) -> list[Session]:
    """Held-out sessions for closed-loop stability: half base users, half demo users (frequent
    tasks), cut to ``actions`` actions."""
    out = [base_session(seed + i, actions) for i in range(n - n // 2)]
    for i in range(n // 2):
        s = user_session(seed + 500 + i)
        while len(s.actions) < actions:  # demo users act on: another user's tasks on the same desktop
            more = user_session(seed + 500 + i + 1000 * len(s.actions))
            s.actions, s.tags = s.actions + more.actions, s.tags + more.tags
        s.actions, s.tags = s.actions[:actions], s.tags[:actions]
        out.append(s)
    return out


def closed_loop_curves(model: NextFrameModel, sessions: Sequence[Session], steps: int = DEFAULT_STEPS, seed: int = 0, snap: bool = True) -> dict[str, list[float]]:
    """Per action index (1..N): the mean PSNR of the model's closed-loop frame against the true
    frame, and the mean fraction of its pixels off the palette, over ``sessions``."""
    psnrs, off = [], []
    for i, s in enumerate(sessions):
        frames = np.stack(rollout(model, s, steps, seed + i, snap)[1:])
        true = np.stack(s.frames(model.config.size)[1:])
        psnrs.append([psnr(f[None], t[None]) for f, t in zip(frames, true, strict=True)])
        off.append([off_palette_fraction(f) for f in frames])
    return {"psnr": np.mean(psnrs, axis=0).tolist(), "off_palette": np.mean(off, axis=0).tolist()}


def rollout_psnr_by_index(model: NextFrameModel, n_sessions: int = 8, actions: int = 20, steps: int = DEFAULT_STEPS) -> list[float]:
    """Closed-loop PSNR per action index over :func:`probe_sessions`."""
    return closed_loop_curves(model, probe_sessions(n_sessions, actions), steps)["psnr"]


#: What the guarded rollout's judge holds a canary to (``RunConfig.rollout.guards``): per-kind
#: success may drop by one held-out session in four, the mean closed-loop PSNR by 1 dB.
JUDGE_GUARDS = {"frequent/success": {"better": "higher", "margin": 0.25},
                "rare/success": {"better": "higher", "margin": 0.25},
                "rollout_psnr": {"better": "higher", "margin": 1.0}}


class JudgeEvaluation:
    """The canary judge's evaluation: every task on ``sessions`` held-out sessions each (2 by
    default: ~4 s on one core), plus the mean closed-loop PSNR over the tasks."""

    def __init__(self, sessions: int = 2, steps: int = DEFAULT_STEPS, seed: int = 60_000) -> None:
        from neuralos_example.data import TASKS

        self.sets = {task: heldout(task, sessions, seed=seed) for task in TASKS}
        self.steps = steps

    def __call__(self, model: NextFrameModel) -> dict[str, float]:
        out = evaluate_tasks(model, self.sets, self.steps)
        psnrs = [v for k, v in out.items() if k.endswith("/rollout_psnr")]
        out["rollout_psnr"] = float(np.mean(psnrs)) if psnrs else float("nan")
        return out
