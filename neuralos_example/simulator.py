"""A small deterministic desktop: the stand-in for the real desktop in the miniature NeuralOS.

The screen (64x64 by default; any multiple of 64 scales the same layout) has a top panel with a
static clock stripe, three desktop icons (home folder, web browser, trash), windows that open,
raise and close, a right-click menu whose "New Folder" item opens a naming dialog, folders that
appear on the desktop once named, a browser whose page shows after a loading bar has advanced
for 6-8 steps, and a cursor drawn last. At this size UI elements are colour blocks, not text:
each typed character is a small block in its own colour (36 colours for a-z and 0-9), so a name's
length and letters are visible.

Actions are a cursor position plus an event (:class:`Event`): move, left click, right click, a key
(a-z, 0-9; the character rides in :attr:`Action.key`) or enter. Every action moves the cursor to
its position first. Coordinates are screen pixels; out-of-range coordinates raise ``ValueError``
(they are never clamped, so a bad logged action fails loudly instead of landing somewhere else).

Behaviour, in the order a step applies it:

* time passes: an open browser that is still loading advances by one step;
* the cursor moves to the action's position (a move does nothing else);
* while the naming dialog is open it is modal: keys type (at most 8 characters), enter or a
  left click on OK creates the folder (an empty name is refused and the dialog stays), a left
  click on Cancel closes it; everything else is ignored;
* while the context menu is open, a left click on an item runs it ("New Folder" opens the
  dialog, "Refresh" does nothing) and a left click anywhere else only closes the menu; a
  right click closes it too and, on empty desktop, reopens it there;
* a right click on empty desktop opens the context menu at the cursor (moved in to fit);
* a left click on a window's close button closes it, anywhere else on a window raises it; a
  left click on an icon opens its window (or raises it when already open). Keys and enter
  outside the dialog do nothing.

Determinism: the only randomness (each window's position jitter of up to 2 layout pixels, and
the browser's loading time and page layout) comes from a ``numpy.random.Generator`` seeded in
:meth:`Desktop.reset`, drawn only when a window opens. Same seed and actions give identical
frames; the first frame is the same for every seed. :func:`render_state` is a pure function of
a :class:`DesktopState`; :meth:`Desktop.clone` copies the generator as well.

Rendering is numpy slicing over cached sprites: a step plus its render takes a few tens of
microseconds at 64x64.
"""

from __future__ import annotations

import colorsys
import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "BUILTIN_ICONS",
    "KEYS",
    "MAX_NAME",
    "MENU_ITEMS",
    "N_EVENTS",
    "Action",
    "Desktop",
    "DesktopState",
    "Event",
    "Folder",
    "Window",
    "browser_page_loaded",
    "browser_page_rect",
    "center",
    "close_button_rect",
    "create_folder_task",
    "cursor_map",
    "dialog_button_rect",
    "dialog_open",
    "folder_created",
    "folder_icon_rect",
    "hit_test",
    "key_for_index",
    "icon_rect",
    "menu_item_rect",
    "menu_open",
    "open_browser_task",
    "open_icon_task",
    "palette",
    "random_user",
    "region_error",
    "render_state",
    "transitions",
    "window_of",
    "window_open",
]

BASE = 64  # the layout is drawn on a 64x64 grid; larger sizes scale it by size // 64
KEYS = "abcdefghijklmnopqrstuvwxyz0123456789"
MAX_NAME = 8  # characters a folder name can have; further keys are ignored
LOAD_STEPS = (6, 8)  # the browser's loading bar shows for this many steps (inclusive range)
N_PAGES = 3  # page layouts a browser can load
BUILTIN_ICONS = {"home": 0, "browser": 1, "trash": 2}  # name -> desktop slot
ICON_KIND = {0: "files", 1: "browser", 2: "trash"}  # built-in slot -> window kind
MENU_ITEMS = ("new_folder", "refresh")

Rect = tuple[int, int, int, int]  # x, y, width, height in screen pixels


class Event(IntEnum):
    """What an action does at its cursor position (a small set: a class embedding per event)."""

    MOVE = 0
    LEFT_CLICK = 1
    RIGHT_CLICK = 2
    KEY = 3  # the character is Action.key
    ENTER = 4


N_EVENTS = len(Event)


@dataclass(frozen=True)
class Action:
    """One user input: the cursor goes to (x, y) in screen pixels, then ``event`` happens there.

    ``key`` is one character of a-z or 0-9 for :attr:`Event.KEY` and ``None`` otherwise. ``x`` and
    ``y`` must be non-negative ints; the upper bound is the screen size, checked by
    :meth:`Desktop.step` (``ValueError``, never clamped).
    """

    x: int
    y: int
    event: Event = Event.MOVE
    key: str | None = None

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"Action.{name} must be an int pixel coordinate, got {v!r}")
            if v < 0:
                raise ValueError(f"Action.{name}={v} is negative; coordinates are screen pixels from 0")
            object.__setattr__(self, name, int(v))
        try:
            ev = Event(self.event)
        except ValueError:
            names = ", ".join(f"{e.name}={e.value}" for e in Event)
            raise ValueError(f"unknown event {self.event!r}; events are {names}") from None
        object.__setattr__(self, "event", ev)
        if ev == Event.KEY:
            if not isinstance(self.key, str) or len(self.key) != 1 or self.key not in KEYS:
                raise ValueError(f"a KEY action needs key= one character of a-z or 0-9, got {self.key!r}")
        elif self.key is not None:
            raise ValueError(f"only KEY actions carry a key; {ev.name} got key={self.key!r}")

    @property
    def key_index(self) -> int:
        """0 without a key, else 1 + the key's position in :data:`KEYS` (for a key embedding)."""
        return 0 if self.key is None else KEYS.index(self.key) + 1

    def check_bounds(self, size: int) -> None:
        if self.x >= size or self.y >= size:
            raise ValueError(f"action at ({self.x}, {self.y}) is outside the {size}x{size} screen")

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "event": self.event.name, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Action:
        ev = d["event"]
        if isinstance(ev, str):
            try:
                ev = Event[ev.upper()]
            except KeyError:
                raise ValueError(f"unknown event {ev!r}; events are {[e.name for e in Event]}") from None
        return cls(d["x"], d["y"], ev, d.get("key"))

    @classmethod
    def move(cls, x: int, y: int) -> Action:
        return cls(x, y, Event.MOVE)

    @classmethod
    def left(cls, x: int, y: int) -> Action:
        return cls(x, y, Event.LEFT_CLICK)

    @classmethod
    def right(cls, x: int, y: int) -> Action:
        return cls(x, y, Event.RIGHT_CLICK)

    @classmethod
    def typed(cls, x: int, y: int, key: str) -> Action:
        return cls(x, y, Event.KEY, key)

    @classmethod
    def enter(cls, x: int, y: int) -> Action:
        return cls(x, y, Event.ENTER)


@dataclass(frozen=True)
class Window:
    """An open window; position and size in screen pixels."""

    kind: str  # "files" (home), "browser", "trash" or "folder" (a created folder)
    x: int
    y: int
    w: int
    h: int
    slot: int = -1  # "folder": the desktop slot of the folder it shows
    load_steps: int = 0  # "browser": steps from opening until the page shows
    progress: int = 0  # "browser": steps since opening
    page: int = 0  # "browser": which page layout loads

    @property
    def loaded(self) -> bool:
        return self.kind == "browser" and self.progress >= self.load_steps

    def contains(self, px: int, py: int) -> bool:
        return self.x <= px < self.x + self.w and self.y <= py < self.y + self.h


@dataclass(frozen=True)
class Folder:
    name: str
    slot: int  # desktop grid slot (0-2 are the built-in icons)


@dataclass
class DesktopState:
    """Everything the screen depends on (plus a step counter). ``copy()`` is cheap and deep enough:
    windows and folders are immutable, the lists are copied."""

    size: int = BASE
    cursor: tuple[int, int] = (BASE // 2, BASE // 2)
    windows: list[Window] = field(default_factory=list)  # z-order, bottom first; the last is focused
    menu: tuple[int, int] | None = None  # top-left corner of the open context menu
    dialog: str | None = None  # the naming dialog's text while it is open
    folders: list[Folder] = field(default_factory=list)  # created folders, in creation order
    steps: int = 0

    def copy(self) -> DesktopState:
        return dataclasses.replace(self, windows=list(self.windows), folders=list(self.folders))


# --------------------------------------------------------------------------- layout (64-grid units)

PANEL_H = 5
ICON_W, ICON_H, ICON_HIT_H = 8, 8, 11  # icon, and icon plus its label strip
SLOT_X0, SLOT_DX, SLOT_Y0, SLOT_DY = 2, 12, 8, 14
SLOT_ROWS, SLOT_COLS = 4, 5
N_SLOTS = SLOT_ROWS * SLOT_COLS  # filled column by column: slot i is column i // 4, row i % 4
TITLE_H = 4  # title bar rows 1..4 inside the 1-pixel border
WINDOW_GEOMETRY = {  # kind -> base x, y, w, h; positions are jittered by up to +-2 when a window opens
    "files": (16, 9, 36, 28),
    "browser": (19, 12, 40, 32),
    "trash": (18, 24, 34, 26),
    "folder": (22, 16, 32, 24),
}
JITTER = 2
MENU_W, MENU_ITEM_H = 18, 5
MENU_H = 2 + MENU_ITEM_H * len(MENU_ITEMS)
DIALOG_X, DIALOG_Y, DIALOG_W, DIALOG_H = 10, 21, 44, 22
DIALOG_OK = (22, 16, 9, 5)  # relative to the dialog
DIALOG_CANCEL = (32, 16, 9, 5)
LOAD_BAR = (8, 19, 24, 3)  # relative to the browser window; fills 3 pixels per step
LOAD_FILL_PER_STEP = 3

# colours
BG = (46, 104, 128)
PANEL = (28, 28, 32)
BORDER = (45, 45, 50)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
LABEL = (225, 225, 225)
CLOSE = (215, 55, 50)
TITLE = {"files": (235, 140, 50), "browser": (60, 120, 220), "trash": (70, 78, 92), "folder": (235, 195, 60)}
BODY = {"files": (228, 228, 232), "browser": (250, 250, 250), "trash": (242, 242, 242), "folder": (246, 244, 232)}
TRACK = (205, 205, 210)
LOAD_FILL = (40, 130, 240)
PAGE_HEADER = ((205, 70, 60), (60, 160, 90), (130, 80, 180))
MENU_BG = (236, 236, 236)
MENU_HOVER = (70, 130, 220)
OK_COLOUR = (70, 170, 90)
CANCEL_COLOUR = (190, 85, 85)


def _glyph_colours() -> list[tuple[int, int, int]]:
    out = []
    for i in range(len(KEYS)):
        hue, value = (i % 12) / 12.0, (1.0, 0.72, 0.46)[i // 12]
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


GLYPH = _glyph_colours()  # one colour per character of KEYS

_ICON_ART = {
    "home": ["OOO.....", "OHHO....", "OOOOOOOO", "OHHHWHHO", "OHHWWWHO", "OHWWWWWO", "OHHWHWHO", "OOOOOOOO"],
    "browser": ["..BBBB..", ".BCCGGB.", "BCGGGCCB", "BCCGGCCB", "BCCCCGGB", "BGCCCGGB", ".BCCCCB.", "..BBBB.."],
    "trash": ["...DD...", "DDDDDDDD", ".LLLLLL.", ".LDLLDL.", ".LDLLDL.", ".LDLLDL.", ".LDLLDL.", "..LLLL.."],
    "folder": ["OOO.....", "OYYO....", "OOOOOOOO", "OYYYYYYO", "OYYYYYYO", "OYYYYYYO", "OYYYYYYO", "OOOOOOOO"],
}
_ART_COLOURS = {
    "O": (150, 85, 25), "H": (235, 140, 50), "W": WHITE, "B": (20, 60, 160), "C": (90, 180, 240),
    "G": (60, 170, 80), "D": (70, 70, 78), "L": (172, 172, 178), "Y": (250, 210, 70), "K": BLACK,
}
_CURSOR_ART = ["K....", "KK...", "KWK..", "KWWK.", "KWWWK", "KWKKK", "KK..."]
_FOLDER_ART_OUTLINE = (185, 135, 20)


# --------------------------------------------------------------------------- geometry (screen pixels)


def _scale(size: int) -> int:
    return size // BASE


def key_for_index(key_index: int) -> str | None:
    """The inverse of :attr:`Action.key_index`: None for 0, else the key (for logged columns)."""
    if not 0 <= key_index <= len(KEYS):
        raise ValueError(f"key_index must be 0..{len(KEYS)}, got {key_index}")
    return None if key_index == 0 else KEYS[key_index - 1]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < BASE or size % BASE:
        raise ValueError(f"size must be a positive multiple of {BASE} (64, 128, ...), got {size!r}")
    return int(size)


def center(rect: Rect) -> tuple[int, int]:
    x, y, w, h = rect
    return x + w // 2, y + h // 2


def _inside(rect: Rect, px: int, py: int) -> bool:
    x, y, w, h = rect
    return x <= px < x + w and y <= py < y + h


def _slot_xy(slot: int, size: int) -> tuple[int, int]:
    s = _scale(size)
    return (SLOT_X0 + SLOT_DX * (slot // SLOT_ROWS)) * s, (SLOT_Y0 + SLOT_DY * (slot % SLOT_ROWS)) * s


def slot_rect(slot: int, size: int) -> Rect:
    """The clickable area of desktop slot ``slot``: the icon and its label strip."""
    x, y = _slot_xy(slot, size)
    s = _scale(size)
    return x, y, ICON_W * s, ICON_HIT_H * s


def _occupied_slots(state: DesktopState) -> dict[int, str | Folder]:
    out: dict[int, str | Folder] = {slot: name for name, slot in BUILTIN_ICONS.items()}
    for f in state.folders:
        out[f.slot] = f
    return out


def icon_rect(state: DesktopState, name: str) -> Rect | None:
    """The clickable rect of a built-in icon ("home", "browser", "trash") or of the first created
    folder called ``name``; None if there is no such icon."""
    if name in BUILTIN_ICONS:
        return slot_rect(BUILTIN_ICONS[name], state.size)
    for f in state.folders:
        if f.name == name:
            return slot_rect(f.slot, state.size)
    return None


def folder_icon_rect(state: DesktopState, name: str) -> Rect | None:
    """Where the folder ``name`` is drawn on the desktop (icon and label), or None."""
    return icon_rect(state, name) if name not in BUILTIN_ICONS else None


def _close_rect(win: Window, size: int) -> Rect:
    s = _scale(size)
    return win.x + win.w - 5 * s, win.y + s, 4 * s, 4 * s


def _title_rect(win: Window, size: int) -> Rect:
    s = _scale(size)
    return win.x, win.y, win.w, (1 + TITLE_H) * s


def window_of(state: DesktopState, kind: str, slot: int | None = None) -> Window | None:
    """The topmost open window of ``kind`` (for "folder", optionally the one showing ``slot``)."""
    for win in reversed(state.windows):
        if win.kind == kind and (slot is None or win.slot == slot):
            return win
    return None


def close_button_rect(state: DesktopState, kind: str, slot: int | None = None) -> Rect | None:
    """The close button of the topmost window of ``kind``; None when no such window is open."""
    win = window_of(state, kind, slot)
    return None if win is None else _close_rect(win, state.size)


def browser_page_rect(state: DesktopState) -> Rect | None:
    """The content area of the topmost browser window (where the loading bar, then the page, is)."""
    win = window_of(state, "browser")
    if win is None:
        return None
    s = _scale(state.size)
    return win.x + s, win.y + 10 * s, win.w - 2 * s, win.h - 11 * s


def _menu_pos(size: int, x: int, y: int) -> tuple[int, int]:
    s = _scale(size)
    return min(x, size - MENU_W * s), max(PANEL_H * s, min(y, size - MENU_H * s))


def menu_item_rect(state: DesktopState, item: str | int = "new_folder") -> Rect | None:
    """The rect of a context-menu item ("new_folder", "refresh" or its index); None if the menu is closed."""
    if state.menu is None:
        return None
    i = MENU_ITEMS.index(item) if isinstance(item, str) else int(item)
    if not 0 <= i < len(MENU_ITEMS):
        raise ValueError(f"menu item {item!r} is not one of {MENU_ITEMS}")
    s = _scale(state.size)
    mx, my = state.menu
    return mx + s, my + (1 + MENU_ITEM_H * i) * s, (MENU_W - 2) * s, MENU_ITEM_H * s


def dialog_button_rect(state: DesktopState, which: str = "ok") -> Rect | None:
    """The naming dialog's "ok" or "cancel" button; None when the dialog is closed."""
    if state.dialog is None:
        return None
    if which not in ("ok", "cancel"):
        raise ValueError(f"dialog buttons are 'ok' and 'cancel', got {which!r}")
    s = _scale(state.size)
    bx, by, bw, bh = DIALOG_OK if which == "ok" else DIALOG_CANCEL
    return (DIALOG_X + bx) * s, (DIALOG_Y + by) * s, bw * s, bh * s


def _dialog_rect(size: int) -> Rect:
    s = _scale(size)
    return DIALOG_X * s, DIALOG_Y * s, DIALOG_W * s, DIALOG_H * s


def hit_test(state: DesktopState, px: int, py: int) -> tuple[Any, ...]:
    """What is under screen pixel (px, py), top first:

    ``("dialog", "ok" | "cancel" | "body")``, ``("menu", item | None)``,
    ``("window", index, "close" | "title" | "body")``, ``("panel",)``, ``("icon", slot)`` or ``("desktop",)``.
    """
    size = state.size
    if state.dialog is not None and _inside(_dialog_rect(size), px, py):
        for which in ("ok", "cancel"):
            if _inside(dialog_button_rect(state, which), px, py):  # type: ignore[arg-type]
                return ("dialog", which)
        return ("dialog", "body")
    if state.menu is not None:
        s = _scale(size)
        if _inside((*state.menu, MENU_W * s, MENU_H * s), px, py):
            for i, item in enumerate(MENU_ITEMS):
                if _inside(menu_item_rect(state, i), px, py):  # type: ignore[arg-type]
                    return ("menu", item)
            return ("menu", None)
    for i in range(len(state.windows) - 1, -1, -1):
        win = state.windows[i]
        if win.contains(px, py):
            if _inside(_close_rect(win, size), px, py):
                return ("window", i, "close")
            if _inside(_title_rect(win, size), px, py):
                return ("window", i, "title")
            return ("window", i, "body")
    if py < PANEL_H * _scale(size):
        return ("panel",)
    for slot in _occupied_slots(state):
        if _inside(slot_rect(slot, size), px, py):
            return ("icon", slot)
    return ("desktop",)


# --------------------------------------------------------------------------- predicates


def folder_created(state: DesktopState, name: str | None = None) -> bool:
    """A folder (called ``name``, when given) is on the desktop."""
    return any(name is None or f.name == name for f in state.folders)


def browser_page_loaded(state: DesktopState) -> bool:
    """A browser window is open and its page has loaded (the loading bar is gone)."""
    return any(w.loaded for w in state.windows)


def window_open(state: DesktopState, kind: str) -> bool:
    return window_of(state, kind) is not None


def menu_open(state: DesktopState) -> bool:
    return state.menu is not None


def dialog_open(state: DesktopState) -> bool:
    return state.dialog is not None


def region_error(frame: np.ndarray, reference: np.ndarray, rect: Rect) -> float:
    """Mean absolute difference (0-255) between two frames inside ``rect``: a frame-level check for
    closed-loop rollouts, e.g. a generated frame against the simulator's true frame at
    :func:`folder_icon_rect` or :func:`browser_page_rect`."""
    x, y, w, h = rect
    a = frame[y : y + h, x : x + w].astype(np.float32)
    b = reference[y : y + h, x : x + w].astype(np.float32)
    return float(np.abs(a - b).mean()) if a.size else 0.0


# --------------------------------------------------------------------------- sprites


def _fill(img: np.ndarray, x: int, y: int, w: int, h: int, colour: tuple[int, int, int]) -> None:
    img[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = colour


def _up(unit: np.ndarray, s: int) -> np.ndarray:
    out = unit if s == 1 else np.repeat(np.repeat(unit, s, axis=0), s, axis=1)
    out = np.ascontiguousarray(out)
    out.flags.writeable = False
    return out


def _art(rows: Sequence[str], colours: dict[str, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    h, w = len(rows), len(rows[0])
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), bool)
    for r, line in enumerate(rows):
        for c, ch in enumerate(line):
            if ch != ".":
                img[r, c] = colours[ch]
                mask[r, c] = True
    return img, mask


def _draw_art(img: np.ndarray, name: str, x: int, y: int) -> None:
    colours = dict(_ART_COLOURS)
    if name == "folder":
        colours["O"] = _FOLDER_ART_OUTLINE
    art, mask = _art(_ICON_ART[name], colours)
    region = img[y : y + art.shape[0], x : x + art.shape[1]]
    region[mask] = art[mask]


def _label(img: np.ndarray, x: int, y: int, text: str | None) -> None:
    """Three 2x2 blocks under an icon: the first letters of a name, or plain light blocks."""
    for i in range(3):
        if text is None:
            colour = LABEL
        elif i < len(text):
            colour = GLYPH[KEYS.index(text[i])]
        else:
            continue
        _fill(img, x + 3 * i, y + ICON_H + 1, 2, 2, colour)


@lru_cache(maxsize=8)
def _base(size: int) -> np.ndarray:
    """Background, panel with its clock stripe, and the three built-in icons."""
    img = np.empty((BASE, BASE, 3), np.uint8)
    img[:] = BG
    _fill(img, 0, 0, BASE, PANEL_H, PANEL)
    _fill(img, 1, 1, 6, 3, (95, 95, 105))  # the "activities" button
    _fill(img, 49, 1, 14, 3, (190, 190, 190))  # the clock: a light stripe with four dark digits
    for dx in (50, 53, 57, 60):
        _fill(img, dx, 2, 2, 1, (40, 40, 40))
    _fill(img, 55, 2, 1, 1, (40, 40, 40))
    for name, slot in BUILTIN_ICONS.items():
        x, y = _slot_xy(slot, BASE)
        _draw_art(img, name, x, y)
        _label(img, x, y, None)
    return _up(img, _scale(size))


@lru_cache(maxsize=256)
def _folder_sprite(prefix: str, size: int) -> np.ndarray:
    img = np.empty((ICON_HIT_H, ICON_W, 3), np.uint8)
    img[:] = BG
    _draw_art(img, "folder", 0, 0)
    _label(img, 0, 0, prefix)
    return _up(img, _scale(size))


@lru_cache(maxsize=64)
def _desktop_layer(folders: tuple[Folder, ...], size: int) -> np.ndarray:
    """The base plus the created folders' icons (changes only when a folder is created)."""
    img = _base(size).copy()
    for f in folders:
        _blit(img, _folder_sprite(f.name[:3], size), *_slot_xy(f.slot, size))
    img.flags.writeable = False
    return img


def _dim(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """An unfocused window's title colour: washed out towards light grey."""
    return tuple(int(0.4 * c + 0.6 * 190) for c in colour)  # type: ignore[return-value]


@lru_cache(maxsize=512)
def _window_sprite(kind: str, focused: bool, variant: Any, size: int) -> np.ndarray:
    """A window at unit scale, scaled. ``variant``: the folder name for "folder" windows,
    ("loading", progress) or ("page", layout) for the browser, None otherwise."""
    w, h = WINDOW_GEOMETRY[kind][2:]
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BORDER
    _fill(img, 1, 1 + TITLE_H, w - 2, h - 2 - TITLE_H, BODY[kind])
    _fill(img, 1, 1, w - 2, TITLE_H, TITLE[kind] if focused else _dim(TITLE[kind]))
    _fill(img, w - 5, 1, 4, 4, CLOSE if focused else _dim(CLOSE))
    _fill(img, w - 4, 2, 2, 2, WHITE)
    if kind == "files":
        _fill(img, 1, 5, 7, h - 6, (196, 202, 214))  # sidebar with three places
        for r in range(3):
            _fill(img, 2, 8 + 4 * r, 5, 2, (150, 158, 175))
        for r in range(2):
            for c in range(3):
                _fill(img, 11 + 8 * c, 9 + 8 * r, 5, 4, (240, 180, 60))
                _fill(img, 11 + 8 * c, 8 + 8 * r, 2, 1, (240, 180, 60))
    elif kind == "trash":
        cx, cy = w // 2 - 3, 9
        _fill(img, cx, cy, 6, 1, (90, 90, 98))
        _fill(img, cx + 1, cy + 1, 4, 7, (172, 172, 178))
        _fill(img, cx + 2, cy + 2, 1, 5, (120, 120, 128))
        _fill(img, cx + 4, cy + 2, 1, 5, (120, 120, 128))
        _fill(img, cx - 3, cy + 11, 12, 1, (200, 200, 200))  # "empty"
    elif kind == "folder":
        for i, ch in enumerate(str(variant)[:MAX_NAME]):
            _fill(img, 2 + 3 * i, 2, 2, 2, GLYPH[KEYS.index(ch)])
        cx, cy = w // 2 - 4, 10  # a faint empty-folder outline
        _fill(img, cx, cy, 9, 7, (222, 218, 200))
        _fill(img, cx + 1, cy + 1, 7, 5, BODY["folder"])
    elif kind == "browser":
        _fill(img, 1, 5, w - 2, 5, (226, 226, 232))  # toolbar: back/forward and the address field
        _fill(img, 2, 7, 2, 1, (130, 130, 140))
        _fill(img, 5, 7, 2, 1, (130, 130, 140))
        _fill(img, 8, 6, w - 11, 3, WHITE)
        state, n = variant
        if state == "loading":
            bx, by, bw, bh = LOAD_BAR
            _fill(img, bx, by, bw, bh, TRACK)
            _fill(img, bx, by, min(bw, LOAD_FILL_PER_STEP * n), bh, LOAD_FILL)
            _fill(img, 9, 7, 2, 1, LOAD_FILL)  # a busy mark in the address field
        else:
            colour = PAGE_HEADER[n]
            _fill(img, 9, 7, 12, 1, (110, 110, 120))  # the address
            _fill(img, 1, 10, w - 2, 5, colour)
            _fill(img, 3, 12, 10, 1, WHITE)
            light: Any = tuple(int(0.45 * c + 0.55 * 255) for c in colour)
            text = (120, 120, 128)
            if n < 2:  # a picture on one side, lines of text on the other
                pic_x, text_x = (24, 3) if n == 0 else (3, 19)
                _fill(img, pic_x, 17, 13, 11, light)
                _fill(img, pic_x + 3, 20, 7, 5, colour)
                for r, length in enumerate((17, 13, 16, 10)):
                    _fill(img, text_x, 17 + 3 * r, length, 1, text)
            else:  # a wide banner over two columns of text
                _fill(img, 3, 17, w - 6, 5, light)
                _fill(img, 6, 18, 9, 3, colour)
                for r in range(2):
                    _fill(img, 3, 24 + 3 * r, 15, 1, text)
                    _fill(img, 21, 24 + 3 * r, 14 - 4 * r, 1, text)
    return _up(img, _scale(size))


@lru_cache(maxsize=16)
def _menu_sprite(hover: int, size: int) -> np.ndarray:
    img = np.empty((MENU_H, MENU_W, 3), np.uint8)
    img[:] = BORDER
    for i in range(len(MENU_ITEMS)):
        y = 1 + MENU_ITEM_H * i
        hovered = i == hover
        _fill(img, 1, y, MENU_W - 2, MENU_ITEM_H, MENU_HOVER if hovered else MENU_BG)
        glyph = (240, 180, 60) if i == 0 else (60, 170, 80)
        _fill(img, 2, y + 1, 3, 3, glyph)
        _fill(img, 7, y + 2, 9 if i == 0 else 6, 1, WHITE if hovered else (90, 90, 96))
    return _up(img, _scale(size))


@lru_cache(maxsize=256)
def _dialog_sprite(text: str, size: int) -> np.ndarray:
    img = np.empty((DIALOG_H, DIALOG_W, 3), np.uint8)
    img[:] = BORDER
    _fill(img, 1, 1 + TITLE_H, DIALOG_W - 2, DIALOG_H - 2 - TITLE_H, (232, 232, 236))
    _fill(img, 1, 1, DIALOG_W - 2, TITLE_H, (80, 92, 115))
    _fill(img, 2, 2, 3, 2, (250, 210, 70))  # a folder mark in the title
    _fill(img, 4, 7, 36, 7, (120, 120, 128))  # the text field
    _fill(img, 5, 8, 34, 5, WHITE)
    for i, ch in enumerate(text):
        _fill(img, 6 + 4 * i, 9, 3, 3, GLYPH[KEYS.index(ch)])
    if len(text) < MAX_NAME:
        _fill(img, 6 + 4 * len(text), 8, 1, 5, (20, 20, 20))  # the text caret
    for (bx, by, bw, bh), colour in ((DIALOG_OK, OK_COLOUR), (DIALOG_CANCEL, CANCEL_COLOUR)):
        _fill(img, bx, by, bw, bh, colour)
        _fill(img, bx + 2, by + 2, bw - 4, 1, WHITE)
    return _up(img, _scale(size))


@lru_cache(maxsize=8)
def _cursor_sprite(size: int) -> tuple[np.ndarray, np.ndarray]:
    img, mask = _art(_CURSOR_ART, _ART_COLOURS)
    s = _scale(size)
    up_mask = np.repeat(np.repeat(mask, s, axis=0), s, axis=1)
    up_mask.flags.writeable = False
    return _up(img, s), up_mask


def _blit(img: np.ndarray, sprite: np.ndarray, x: int, y: int, mask: np.ndarray | None = None) -> None:
    size_y, size_x = img.shape[:2]
    h, w = sprite.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size_x), min(y + h, size_y)
    if x0 >= x1 or y0 >= y1:
        return
    sub = sprite[y0 - y : y1 - y, x0 - x : x1 - x]
    if mask is None:
        img[y0:y1, x0:x1] = sub
    else:
        m = mask[y0 - y : y1 - y, x0 - x : x1 - x]
        img[y0:y1, x0:x1][m] = sub[m]


@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """Every colour the simulator can draw, (K, 3) uint8, sorted: the sprites' colours, each
    drawn in every variant (all glyphs, loading progress, pages, hover, focus). A frame of
    the desktop has no other colour; a model's pixel far from all of them is noise."""
    sprites = [_base(BASE), _cursor_sprite(BASE)[0]]
    names = ["".join(KEYS[i : i + MAX_NAME]) for i in range(0, len(KEYS), MAX_NAME)]
    sprites += [_folder_sprite(n[:3], BASE) for n in names] + [_folder_sprite(KEYS[i : i + 3], BASE) for i in range(0, len(KEYS), 3)]
    sprites += [_dialog_sprite(n, BASE) for n in names] + [_menu_sprite(h, BASE) for h in range(-1, len(MENU_ITEMS))]
    for focused in (True, False):
        sprites += [_window_sprite(k, focused, None, BASE) for k in ("files", "trash")]
        sprites += [_window_sprite("folder", focused, n, BASE) for n in names]
        sprites += [_window_sprite("browser", focused, ("loading", p), BASE) for p in range(max(LOAD_STEPS) + 1)]
        sprites += [_window_sprite("browser", focused, ("page", p), BASE) for p in range(N_PAGES)]
    colours = np.unique(np.concatenate([s.reshape(-1, 3) for s in sprites]), axis=0)
    colours.flags.writeable = False
    return colours


def render_state(state: DesktopState) -> np.ndarray:
    """The frame for ``state``: a fresh (size, size, 3) uint8 array. A pure function of the state."""
    size = state.size
    img = _desktop_layer(tuple(state.folders), size).copy()
    names = {f.slot: f.name for f in state.folders}
    top = len(state.windows) - 1
    for i, win in enumerate(state.windows):
        if win.kind == "browser":
            variant: Any = ("page", win.page) if win.loaded else ("loading", win.progress)
        elif win.kind == "folder":
            variant = names.get(win.slot, "")
        else:
            variant = None
        _blit(img, _window_sprite(win.kind, i == top, variant, size), win.x, win.y)
    if state.menu is not None:
        hit = hit_test(state, *state.cursor)
        hover = MENU_ITEMS.index(hit[1]) if hit[0] == "menu" and hit[1] is not None else -1
        _blit(img, _menu_sprite(hover, size), *state.menu)
    if state.dialog is not None:
        dx, dy, _, _ = _dialog_rect(size)
        _blit(img, _dialog_sprite(state.dialog, size), dx, dy)
    sprite, mask = _cursor_sprite(size)
    _blit(img, sprite, state.cursor[0], state.cursor[1], mask)
    return img


# --------------------------------------------------------------------------- the simulator


class Desktop:
    """The desktop simulator. ``step(action)`` applies an action and returns the next frame."""

    def __init__(self, size: int = BASE, seed: int = 0) -> None:
        self.size = _check_size(size)
        self.reset(seed)

    def reset(self, seed: int = 0) -> np.ndarray:
        """Back to the empty desktop (cursor in the middle); returns the first frame (the same for every seed)."""
        self._rng = np.random.default_rng(seed)
        self._state = DesktopState(size=self.size, cursor=(self.size // 2, self.size // 2))
        return self.render()

    @property
    def state(self) -> DesktopState:
        """A copy of the current state."""
        return self._state.copy()

    def render(self) -> np.ndarray:
        return render_state(self._state)

    def clone(self) -> Desktop:
        """An independent copy (state and random generator): it evolves exactly as this one would."""
        other = Desktop.__new__(Desktop)
        other.size = self.size
        other._state = self._state.copy()
        other._rng = copy.deepcopy(self._rng)
        return other

    def step(self, action: Action) -> np.ndarray:
        self.apply(action)
        return self.render()

    def apply(self, action: Action) -> None:
        """``step`` without rendering (for planning on a clone)."""
        if not isinstance(action, Action):
            raise TypeError(f"step() takes an Action, got {type(action).__name__}")
        action.check_bounds(self.size)
        st = self._state
        if any(w.kind == "browser" and not w.loaded for w in st.windows):  # time passes
            st.windows = [
                dataclasses.replace(w, progress=w.progress + 1) if w.kind == "browser" and not w.loaded else w
                for w in st.windows
            ]
        st.cursor = (action.x, action.y)
        st.steps += 1
        ev, x, y = action.event, action.x, action.y
        if ev == Event.MOVE:
            return
        if st.dialog is not None:  # modal
            if ev == Event.KEY:
                if len(st.dialog) < MAX_NAME:
                    st.dialog += action.key  # type: ignore[operator]
            elif ev == Event.ENTER:
                self._confirm()
            elif ev == Event.LEFT_CLICK:
                hit = hit_test(st, x, y)
                if hit == ("dialog", "ok"):
                    self._confirm()
                elif hit == ("dialog", "cancel"):
                    st.dialog = None
            return
        if ev in (Event.KEY, Event.ENTER):
            return
        if st.menu is not None:
            hit = hit_test(st, x, y)
            st.menu = None
            if ev == Event.LEFT_CLICK:
                if hit == ("menu", "new_folder"):
                    st.dialog = ""
                return  # "refresh" does nothing; a click elsewhere only closes the menu
        hit = hit_test(st, x, y)
        if ev == Event.RIGHT_CLICK:
            if hit[0] == "desktop":
                st.menu = _menu_pos(self.size, x, y)
            return
        if hit[0] == "window":
            i, part = hit[1], hit[2]
            if part == "close":
                del st.windows[i]
            elif i != len(st.windows) - 1:
                st.windows.append(st.windows.pop(i))
        elif hit[0] == "icon":
            self._open(hit[1])

    def _open(self, slot: int) -> None:
        st = self._state
        kind = ICON_KIND.get(slot, "folder")
        key = slot if kind == "folder" else None
        for i, win in enumerate(st.windows):
            if win.kind == kind and (key is None or win.slot == key):
                st.windows.append(st.windows.pop(i))  # already open: raise it
                return
        s = _scale(self.size)
        bx, by, w, h = WINDOW_GEOMETRY[kind]
        if kind == "folder":
            bx, by = bx + 2 * (slot % 4), by + 2 * (slot % 4)
        jx, jy = (int(v) for v in self._rng.integers(-JITTER, JITTER + 1, size=2))
        win = Window(kind, (bx + jx) * s, (by + jy) * s, w * s, h * s, slot=slot if kind == "folder" else -1)
        if kind == "browser":
            load = int(self._rng.integers(LOAD_STEPS[0], LOAD_STEPS[1] + 1))
            win = dataclasses.replace(win, load_steps=load, page=int(self._rng.integers(N_PAGES)))
        st.windows.append(win)

    def _confirm(self) -> None:
        st = self._state
        name = st.dialog or ""
        if not name:
            return  # an empty name is refused; the dialog stays open
        used = _occupied_slots(st)
        free = [slot for slot in range(N_SLOTS) if slot not in used]
        if free:
            st.folders.append(Folder(name, free[0]))
        st.dialog = None  # a full desktop (17 folders) closes the dialog without a new folder

    # helpers for scripted users: screen coordinates of targets in the current state

    def icon_center(self, name: str) -> tuple[int, int]:
        return center(_required(icon_rect(self._state, name), f"no icon called {name!r}"))

    def menu_item_center(self, item: str | int = "new_folder") -> tuple[int, int]:
        return center(_required(menu_item_rect(self._state, item), "the context menu is not open"))

    def close_button(self, kind: str, slot: int | None = None) -> tuple[int, int]:
        return center(_required(close_button_rect(self._state, kind, slot), f"no {kind} window is open"))

    def dialog_button_center(self, which: str = "ok") -> tuple[int, int]:
        return center(_required(dialog_button_rect(self._state, which), "the naming dialog is not open"))


def _required(rect: Rect | None, message: str) -> Rect:
    if rect is None:
        raise LookupError(message)
    return rect


# --------------------------------------------------------------------------- training helpers


def transitions(seed: int, actions: Sequence[Action], size: int = BASE) -> list[tuple[np.ndarray, Action, np.ndarray]]:
    """(previous frame, action, next frame) for each action, from a desktop reset with ``seed``."""
    desktop = Desktop(size, seed)
    prev = desktop.render()
    out = []
    for a in actions:
        nxt = desktop.step(a)
        out.append((prev, a, nxt))
        prev = nxt
    return out


def cursor_map(action: Action | tuple[int, int], size: int = BASE, sigma: float | None = None) -> np.ndarray:
    """A (size, size) float32 map with a Gaussian blob (peak 1.0) at the action's cursor position.
    ``sigma`` defaults to one layout pixel (size / 64 screen pixels)."""
    x, y = (action.x, action.y) if isinstance(action, Action) else (int(action[0]), int(action[1]))
    if not (0 <= x < size and 0 <= y < size):
        raise ValueError(f"cursor ({x}, {y}) is outside the {size}x{size} screen")
    sig = float(sigma) if sigma is not None else size / BASE
    r = np.arange(size, dtype=np.float32)
    gx = np.exp(-0.5 * ((r - x) / sig) ** 2)
    gy = np.exp(-0.5 * ((r - y) / sig) ** 2)
    return np.outer(gy, gx).astype(np.float32)


# --------------------------------------------------------------------------- scripted users


class _User:
    """Acts on a clone of the desktop so each step can look at the real outcome (closed loop)."""

    def __init__(self, rng: np.random.Generator, desktop: Desktop) -> None:
        self.rng = rng
        self.sim = desktop.clone()
        self.size = desktop.size
        self.s = _scale(desktop.size)
        self.actions: list[Action] = []

    @property
    def st(self) -> DesktopState:
        return self.sim._state

    def _clip(self, v: float) -> int:
        return int(min(max(round(v), 0), self.size - 1))

    def act(self, event: Event, x: int | None = None, y: int | None = None, key: str | None = None) -> None:
        cx, cy = self.st.cursor
        a = Action(cx if x is None else x, cy if y is None else y, event, key)
        self.actions.append(a)
        self.sim.apply(a)

    def idle(self) -> None:
        """The hand rests or drifts a pixel or two."""
        cx, cy = self.st.cursor
        if self.rng.random() < 0.5:
            self.act(Event.MOVE, cx, cy)
        else:
            d = self.rng.integers(-2, 3, size=2) * self.s
            self.act(Event.MOVE, self._clip(cx + d[0]), self._clip(cy + d[1]))

    def maybe_idle(self, p: float = 0.15) -> None:
        while self.rng.random() < p:
            self.idle()

    def move_to(self, tx: int, ty: int) -> None:
        """One to three moves along a wobbly path ending near (not on) the target."""
        cx, cy = self.st.cursor
        n = int(self.rng.integers(1, 4))
        for i in range(1, n + 1):
            f = 1.0 - (1.0 - i / (n + 1)) ** 2  # fast start, slow approach
            wobble = 3.0 * self.s * (1.0 - f)
            px = cx + (tx - cx) * f + self.rng.normal(0, wobble)
            py = cy + (ty - cy) * f + self.rng.normal(0, wobble)
            self.act(Event.MOVE, self._clip(px), self._clip(py))
        self.maybe_idle(0.1)

    def aim(self, rect: Rect) -> tuple[int, int]:
        """A point near the target's centre: Gaussian noise of a fifth of its smaller side, not clipped
        to the target, so a small target is sometimes missed (the task loops notice and retry)."""
        x, y, w, h = rect
        sd = 0.2 * min(w, h)
        return (
            self._clip(x + (w - 1) / 2 + self.rng.normal(0, sd)),
            self._clip(y + (h - 1) / 2 + self.rng.normal(0, sd)),
        )

    def click(self, rect: Rect, event: Event = Event.LEFT_CLICK) -> None:
        tx, ty = self.aim(rect)
        self.move_to(tx, ty)
        self.act(event, tx, ty)

    def free_point(self, margin: int) -> tuple[int, int] | None:
        """A random point of empty desktop at least ``margin`` pixels from anything else."""
        size, st = self.size, self.st
        busy = np.zeros((size, size), bool)
        busy[: PANEL_H * self.s + margin] = True
        busy[size - margin :] = True
        busy[:, :margin] = True
        busy[:, size - margin :] = True
        rects = [slot_rect(slot, size) for slot in _occupied_slots(st)] + [(w.x, w.y, w.w, w.h) for w in st.windows]
        for x, y, w, h in rects:
            busy[max(y - margin, 0) : y + h + margin, max(x - margin, 0) : x + w + margin] = True
        ys, xs = np.nonzero(~busy)
        if len(xs) == 0:
            return None
        i = int(self.rng.integers(len(xs)))
        return int(xs[i]), int(ys[i])


def _random_name(rng: np.random.Generator) -> str:
    n = int(rng.integers(3, 7))
    letters = KEYS[:26] if rng.random() < 0.8 else KEYS
    return "".join(letters[int(i)] for i in rng.integers(len(letters), size=n))


def create_folder_task(
    rng: np.random.Generator, desktop: Desktop, name: str | None = None, max_rounds: int = 25
) -> list[Action]:
    """Actions that create a folder and name it, from whatever state ``desktop`` is in: right-click
    empty desktop (closing a window first if there is none), click "New Folder", type the name
    (random, 3-6 characters, when not given), confirm with enter (or the OK button, a quarter of
    the time). Clicks carry position noise and may miss; the script sees the outcome (it plays
    the actions on a clone) and retries. ``desktop`` itself is not changed."""
    if name is None:
        name = _random_name(rng)
    if not name or len(name) > MAX_NAME or any(ch not in KEYS for ch in name):
        raise ValueError(f"a folder name is 1-{MAX_NAME} characters of a-z and 0-9, got {name!r}")
    u = _User(rng, desktop)
    target = sum(f.name == name for f in u.st.folders) + 1
    for _ in range(max_rounds):
        st = u.st
        if sum(f.name == name for f in st.folders) >= target:
            break
        if st.dialog is not None:
            if name.startswith(st.dialog):
                for ch in name[len(st.dialog) :]:
                    u.maybe_idle(0.1)
                    u.act(Event.KEY, key=ch)
                u.maybe_idle(0.1)
                if u.rng.random() < 0.25:
                    u.click(_required(dialog_button_rect(u.st, "ok"), "dialog closed"))
                else:
                    u.act(Event.ENTER)
            else:
                u.click(_required(dialog_button_rect(st, "cancel"), "dialog closed"))
        elif st.menu is not None:
            u.maybe_idle(0.2)
            u.click(_required(menu_item_rect(u.st, "new_folder"), "menu closed"))
        else:
            pt = u.free_point(margin=2 * u.s)
            if pt is None:  # no empty desktop: close the top window
                top = st.windows[-1]
                u.click(_close_rect(top, u.size))
            else:
                u.move_to(*pt)
                u.act(Event.RIGHT_CLICK, *pt)
    if u.rng.random() < 0.5:
        u.idle()  # a look at the result
    return u.actions


def open_browser_task(rng: np.random.Generator, desktop: Desktop, max_rounds: int = 40) -> list[Action]:
    """Actions that open the browser (or raise it) and wait, hand resting or drifting, until its page
    has loaded. Works from any state: cancels an open naming dialog first; a click that only
    closes the context menu or misses the icon is noticed and retried."""
    u = _User(rng, desktop)
    for _ in range(max_rounds):
        st = u.st
        top = st.windows[-1] if st.windows else None
        if st.dialog is not None:
            u.click(_required(dialog_button_rect(st, "cancel"), "dialog closed"))
        elif top is None or top.kind != "browser":
            u.click(_required(icon_rect(st, "browser"), "no browser icon"))
        elif not top.loaded:
            u.idle()
        else:
            break
    if u.rng.random() < 0.5:
        u.idle()
    return u.actions


def open_icon_task(rng: np.random.Generator, desktop: Desktop, icon: str = "home", max_rounds: int = 20) -> list[Action]:
    """Actions that open a desktop icon's window ("home", "trash" or a folder's name), retrying
    missed clicks; cancels an open naming dialog first."""
    u = _User(rng, desktop)
    kind = ICON_KIND.get(BUILTIN_ICONS.get(icon, -1), "folder")
    for _ in range(max_rounds):
        st = u.st
        top = st.windows[-1] if st.windows else None
        if top is not None and top.kind == kind and (kind != "folder" or icon_rect(st, icon) == slot_rect(top.slot, u.size)):
            break
        if st.dialog is not None:
            u.click(_required(dialog_button_rect(st, "cancel"), "dialog closed"))
        else:
            u.click(_required(icon_rect(st, icon), f"no icon called {icon!r}"))
    if u.rng.random() < 0.5:
        u.idle()
    return u.actions


def random_user(rng: np.random.Generator, n_steps: int, size: int = BASE) -> list[Action]:
    """Aimless input: the cursor wanders (and sometimes jumps), with clicks, right clicks and keys
    here and there. It rarely completes a frequent task by chance."""
    _check_size(size)
    s = _scale(size)
    x, y = (int(v) for v in rng.integers(size, size=2))
    out = []
    for _ in range(n_steps):
        if rng.random() < 0.3:
            x, y = (int(v) for v in rng.integers(size, size=2))
        else:
            x = int(min(max(round(x + rng.normal(0, 5 * s)), 0), size - 1))
            y = int(min(max(round(y + rng.normal(0, 5 * s)), 0), size - 1))
        ev = Event(int(rng.choice(N_EVENTS, p=[0.6, 0.14, 0.08, 0.12, 0.06])))
        out.append(Action(x, y, ev, KEYS[int(rng.integers(len(KEYS)))] if ev == Event.KEY else None))
    return out
