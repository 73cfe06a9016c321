"""The miniature NeuralOS desktop simulator: determinism, each interaction, scripted users, helpers."""

from __future__ import annotations

import numpy as np
import pytest

from neuralos_example import simulator as sim
from neuralos_example.simulator import (
    Action,
    Desktop,
    Event,
    browser_page_loaded,
    browser_page_rect,
    create_folder_task,
    cursor_map,
    folder_created,
    open_browser_task,
    random_user,
    render_state,
    transitions,
    window_of,
)


def region(frame: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = rect
    return frame[y : y + h, x : x + w]


def px(frame: np.ndarray, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in frame[y, x])


def click(d: Desktop, xy: tuple[int, int]) -> np.ndarray:
    return d.step(Action.left(*xy))


def mixed_actions(seed: int) -> list[Action]:
    rng = np.random.default_rng(seed)
    d = Desktop(seed=seed)
    out: list[Action] = []
    for part in (random_user(rng, 30), None, None, random_user(rng, 20), None):
        if part is None:
            part = create_folder_task(rng, d) if len(out) % 2 else open_browser_task(rng, d)
        for a in part:
            d.apply(a)
        out += part
    return out


def empty_spot(d: Desktop) -> tuple[int, int]:
    return 40, 55  # below every window's base position, right of the icon column


# --------------------------------------------------------------------------- determinism


def test_same_seed_and_actions_give_identical_frames() -> None:
    actions = mixed_actions(3)
    a = [t[2] for t in transitions(7, actions)]
    b = [t[2] for t in transitions(7, actions)]
    assert len(a) == len(actions) > 50
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_seeds_differ_only_where_randomness_is_used() -> None:
    assert np.array_equal(Desktop(seed=0).render(), Desktop(seed=99).render())
    # menu, dialog, typing and a new folder use no randomness: identical for every seed
    d = Desktop()
    plan = create_folder_task(np.random.default_rng(0), d, name="abc")
    frames = {seed: [t[2] for t in transitions(seed, plan)] for seed in range(5)}
    for seed in range(1, 5):
        assert all(np.array_equal(x, y) for x, y in zip(frames[0], frames[seed]))
    # opening windows draws positions (and the browser's loading time and page) from the seed
    plan = [Action.left(*d.icon_center(n)) for n in ("home", "browser", "trash")] + [Action.move(5, 60)] * 10
    finals = [transitions(seed, plan)[-1][2] for seed in range(8)]
    assert any(not np.array_equal(finals[0], f) for f in finals[1:])
    # ... and only inside the windows' possible area (base box +- the jitter)
    mask = np.zeros((64, 64), bool)
    for kind in ("files", "browser", "trash"):
        x, y, w, h = sim.WINDOW_GEOMETRY[kind]
        mask[y - 2 : y + h + 2, x - 2 : x + w + 2] = True
    for f in finals[1:]:
        assert np.array_equal(f[~mask], finals[0][~mask])


def test_clone_evolves_like_the_original_and_state_is_a_copy() -> None:
    d = Desktop(seed=5)
    for a in mixed_actions(1)[:40]:
        d.step(a)
    c = d.clone()
    for a in mixed_actions(2):
        assert np.array_equal(d.step(a), c.step(a))
    st = d.state
    st.windows.clear()
    st.folders.clear()
    assert np.array_equal(render_state(d.state), d.render())
    assert d.state == c.state


def test_size_128_is_the_64_layout_scaled() -> None:
    actions = mixed_actions(4)
    big = [Action(2 * a.x, 2 * a.y, a.event, a.key) for a in actions]
    small_frames = transitions(11, actions)
    big_frames = transitions(11, big, size=128)
    for (_, _, f64), (_, _, f128) in zip(small_frames[::7], big_frames[::7]):
        assert f128.shape == (128, 128, 3)
        assert np.array_equal(f128, np.kron(f64, np.ones((2, 2, 1), np.uint8)))


# --------------------------------------------------------------------------- windows


def test_icons_open_windows_that_raise_and_close() -> None:
    d = Desktop(seed=0)
    start = d.render()
    f = click(d, d.icon_center("home"))
    files = window_of(d.state, "files")
    assert files is not None and [w.kind for w in d.state.windows] == ["files"]
    assert px(f, files.x + 3, files.y + 2) == sim.TITLE["files"]  # focused title bar
    f = click(d, d.icon_center("trash"))
    trash = window_of(d.state, "trash")
    assert [w.kind for w in d.state.windows] == ["files", "trash"]
    assert px(f, trash.x + 3, trash.y + 2) == sim.TITLE["trash"]
    assert px(f, files.x + 3, files.y + 2) == sim._dim(sim.TITLE["files"])  # unfocused: dimmed
    # a click on the lower window raises it
    f = click(d, (files.x + 3, files.y + 7))
    assert [w.kind for w in d.state.windows] == ["trash", "files"]
    assert px(f, files.x + 3, files.y + 2) == sim.TITLE["files"]
    # a click on the icon of an open window raises it, never opens a second one
    click(d, d.icon_center("trash"))
    assert [w.kind for w in d.state.windows] == ["files", "trash"]
    # close buttons close; the desktop comes back
    click(d, d.close_button("trash"))
    assert [w.kind for w in d.state.windows] == ["files"]
    f = click(d, d.close_button("files"))
    assert d.state.windows == []
    assert np.array_equal(f, render_state(sim.DesktopState(cursor=d.state.cursor)))
    assert np.array_equal(start, render_state(sim.DesktopState(cursor=(32, 32))))


def test_panel_and_desktop_clicks_do_nothing() -> None:
    d = Desktop()
    before = d.state
    click(d, (30, 2))
    click(d, empty_spot(d))
    d.step(Action.typed(30, 30, "a"))
    d.step(Action.enter(30, 30))
    after = d.state
    assert (after.windows, after.folders, after.menu, after.dialog) == (before.windows, before.folders, None, None)


# --------------------------------------------------------------------------- context menu


def test_context_menu_opens_on_empty_desktop_and_closes_on_click_elsewhere() -> None:
    d = Desktop()
    start = d.render()
    f = d.step(Action.right(*empty_spot(d)))
    assert sim.menu_open(d.state) and d.state.menu == (40, 52)  # moved up to fit on screen
    item = sim.menu_item_rect(d.state, "new_folder")
    assert (region(f, item) == sim.MENU_BG).all(axis=-1).sum() > 10 and not (region(start, item) == sim.MENU_BG).all(axis=-1).any()
    # hovering highlights the item
    f = d.step(Action.move(*d.menu_item_center("new_folder")))
    assert (region(f, item) == sim.MENU_HOVER).all(axis=-1).sum() > 10
    # a left click elsewhere only closes the menu (it does not also open the icon under it)
    f = click(d, d.icon_center("home"))
    assert not sim.menu_open(d.state) and d.state.windows == []
    assert np.array_equal(f, render_state(sim.DesktopState(cursor=d.state.cursor)))
    # "Refresh" closes it and changes nothing else
    d.step(Action.right(30, 50))
    click(d, d.menu_item_center("refresh"))
    assert not sim.menu_open(d.state) and d.state.dialog is None and d.state.folders == []


def test_right_click_on_windows_icons_and_panel_opens_no_menu() -> None:
    d = Desktop()
    click(d, d.icon_center("home"))
    files = window_of(d.state, "files")
    for xy in [(files.x + 10, files.y + 10), d.icon_center("trash"), (20, 2)]:
        d.step(Action.right(*xy))
        assert not sim.menu_open(d.state), xy
    d.step(Action.right(60, 60))  # in the corner: the menu is moved to fit
    mx, my = d.state.menu
    assert mx + sim.MENU_W <= 64 and my + sim.MENU_H <= 64


# --------------------------------------------------------------------------- new folder


def test_new_folder_dialog_typing_and_enter_make_a_folder() -> None:
    d = Desktop()
    d.step(Action.right(*empty_spot(d)))
    f = click(d, d.menu_item_center("new_folder"))
    assert sim.dialog_open(d.state) and d.state.dialog == "" and not sim.menu_open(d.state)
    dx, dy, dw, dh = sim._dialog_rect(64)
    assert px(f, dx + 8, dy + 2) == (80, 92, 115)  # its title bar
    slot = sim.slot_rect(3, 64)  # the first free slot: below the trash
    before_slot = region(f, slot).copy()
    for i, ch in enumerate("ab3"):
        f = d.step(Action.typed(5, 60, ch))
        # one glyph per character, in the character's colour: the name's length is visible
        assert px(f, dx + 7 + 4 * i, dy + 10) == sim.GLYPH[sim.KEYS.index(ch)]
        assert px(f, dx + 7 + 4 * (i + 1), dy + 10) == sim.WHITE
    assert d.state.dialog == "ab3" and not folder_created(d.state)
    f = d.step(Action.enter(5, 60))
    assert not sim.dialog_open(d.state)
    assert folder_created(d.state) and folder_created(d.state, "ab3") and not folder_created(d.state, "ab")
    assert d.state.folders == [sim.Folder("ab3", 3)]
    after_slot = region(f, slot)
    assert not np.array_equal(before_slot, after_slot)
    x, y, _, _ = slot
    assert px(f, x + 3, y + 4) == sim._ART_COLOURS["Y"]  # the yellow folder body
    for i, ch in enumerate("ab3"):  # the label shows the first letters
        assert px(f, x + 3 * i, y + 9) == sim.GLYPH[sim.KEYS.index(ch)]
    # the new folder opens a window of its own; the next one goes to the next slot
    click(d, d.icon_center("ab3"))
    assert window_of(d.state, "folder", 3) is not None
    click(d, d.close_button("folder"))
    d.step(Action.right(*empty_spot(d)))
    click(d, d.menu_item_center())
    d.step(Action.typed(0, 63, "z"))
    click(d, d.dialog_button_center("ok"))
    assert d.state.folders[-1] == sim.Folder("z", 4)


def test_dialog_is_modal_refuses_empty_names_and_cancels() -> None:
    d = Desktop()
    d.step(Action.right(*empty_spot(d)))
    click(d, d.menu_item_center())
    d.step(Action.enter(1, 60))
    assert d.state.dialog == ""  # an empty name is refused
    click(d, d.icon_center("home"))  # modal: clicks outside do nothing
    d.step(Action.right(*empty_spot(d)))
    assert d.state.windows == [] and not sim.menu_open(d.state) and sim.dialog_open(d.state)
    for ch in "abcdefghijk":
        d.step(Action.typed(1, 60, ch))
    assert d.state.dialog == "abcdefgh"  # at most MAX_NAME characters
    click(d, d.dialog_button_center("cancel"))
    assert not sim.dialog_open(d.state) and not folder_created(d.state)


# --------------------------------------------------------------------------- browser


def test_browser_shows_a_loading_bar_for_several_frames_then_the_page() -> None:
    lengths = set()
    for seed in range(12):
        d = Desktop(seed=seed)
        f = click(d, d.icon_center("browser"))
        win = window_of(d.state, "browser")
        bx, by, bw, bh = sim.LOAD_BAR
        bar = (win.x + bx, win.y + by, bw, bh)
        page = browser_page_rect(d.state)
        loading, fills = 0, []
        while not browser_page_loaded(d.state):
            assert (region(f, bar) == sim.TRACK).all(axis=-1).any()  # the bar's empty part
            fills.append(int((region(f, bar)[0] == sim.LOAD_FILL).all(axis=-1).sum()))
            assert not (region(f, page) == sim.PAGE_HEADER[win.page]).all(axis=-1).any()
            loading += 1
            f = d.step(Action.move(5, 40))
            assert loading < 20
        assert sim.LOAD_STEPS[0] <= loading <= sim.LOAD_STEPS[1]
        assert fills == sorted(fills) and fills[-1] > fills[0]  # the bar advances
        lengths.add(loading)
        header = (region(f, page) == sim.PAGE_HEADER[d.state.windows[-1].page]).all(axis=-1)
        assert header.sum() > 100  # the page's coloured header
        assert not (region(f, bar) == sim.TRACK).all(axis=-1).any()
        f2 = d.step(Action.move(5, 41))
        assert browser_page_loaded(d.state)
        assert np.array_equal(region(f2, page), region(f, page))  # the page stays
    assert len(lengths) > 1  # the loading time depends on the seed


def test_browser_loads_while_hidden_and_reopening_reloads() -> None:
    d = Desktop(seed=2)
    click(d, d.icon_center("browser"))
    click(d, d.icon_center("home"))  # on top of the browser
    for _ in range(10):
        d.step(Action.move(3, 60))
    assert browser_page_loaded(d.state) and d.state.windows[-1].kind == "files"
    click(d, d.close_button("browser"))
    assert not browser_page_loaded(d.state)
    click(d, d.icon_center("browser"))
    assert window_of(d.state, "browser").progress == 0


# --------------------------------------------------------------------------- cursor


@pytest.mark.parametrize("seed", [0, 1])
def test_cursor_is_drawn_last_and_visible_everywhere(seed: int) -> None:
    d = Desktop(seed=seed)
    click(d, d.icon_center("browser"))
    click(d, d.icon_center("home"))
    d.step(Action.right(30, 55))
    state = d.state
    rng = np.random.default_rng(seed)
    for x, y in [(0, 0), (30, 2), (5, 10), (25, 20), (33, 57), *rng.integers(0, 58, size=(20, 2)).tolist()]:
        state.cursor = (x, y)
        f = render_state(state)
        assert px(f, x, y) == sim.BLACK  # the tip
        assert px(f, x + 1, y + 3) == sim.WHITE and px(f, x, y + 4) == sim.BLACK  # white fill, black edge
    for x, y in [(63, 63), (60, 0), (0, 62)]:  # clipped at the edges
        state.cursor = (x, y)
        assert px(render_state(state), x, y) == sim.BLACK


# --------------------------------------------------------------------------- scripted users


def test_scripted_tasks_succeed_from_fresh_and_messy_desktops() -> None:
    folder_ok = browser_ok = 0
    n = 50
    for seed in range(n):
        rng = np.random.default_rng(seed)
        d = Desktop(seed=seed)
        if seed % 2:  # start from wherever a random user left the desktop
            for a in random_user(rng, 40):
                d.step(a)
        before = d.state
        plan = create_folder_task(rng, d)
        assert d.state == before  # planning does not touch the desktop
        for a in plan:
            d.step(a)
        folder_ok += len(d.state.folders) == len(before.folders) + 1 and not sim.dialog_open(d.state)
        for a in open_browser_task(rng, d):
            d.step(a)
        browser_ok += browser_page_loaded(d.state) and d.state.windows[-1].kind == "browser"
        assert all(isinstance(a, Action) for a in plan)
    assert folder_ok >= 0.95 * n and browser_ok >= 0.95 * n


def test_create_folder_task_uses_the_given_name_and_has_human_noise() -> None:
    plans = [create_folder_task(np.random.default_rng(s), Desktop(), name="notes") for s in range(10)]
    for plan in plans:
        d = Desktop()
        for a in plan:
            d.step(a)
        assert folder_created(d.state, "notes")
        assert "".join(a.key for a in plan if a.event == Event.KEY) == "notes"
    assert len({tuple(plan) for plan in plans}) == 10  # the paths and timing vary
    with pytest.raises(ValueError, match="a-z"):
        create_folder_task(np.random.default_rng(0), Desktop(), name="Bad!")


def test_random_users_rarely_complete_the_frequent_tasks() -> None:
    folders = pages = 0
    n = 50
    for seed in range(n):
        d = Desktop(seed=seed)
        for a in random_user(np.random.default_rng(1000 + seed), 40):
            d.step(a)
        folders += folder_created(d.state)
        pages += browser_page_loaded(d.state)
    assert folders <= 0.2 * n and pages <= 0.2 * n


# --------------------------------------------------------------------------- training helpers


def test_transitions_and_cursor_map_shapes() -> None:
    actions = random_user(np.random.default_rng(0), 12)
    tr = transitions(0, actions)
    assert len(tr) == 12
    for i, (prev, a, nxt) in enumerate(tr):
        assert prev.shape == nxt.shape == (64, 64, 3) and prev.dtype == nxt.dtype == np.uint8
        assert a is actions[i]
        if i:
            assert prev is tr[i - 1][2]
    assert np.array_equal(tr[0][0], Desktop().render())
    m = cursor_map(Action.left(10, 20))
    assert m.shape == (64, 64) and m.dtype == np.float32
    assert np.unravel_index(m.argmax(), m.shape) == (20, 10) and m.max() == 1.0
    assert m[20, 14] < 0.01 and 0.0 <= m.min()
    assert cursor_map((100, 5), size=128).shape == (128, 128)
    with pytest.raises(ValueError, match="outside"):
        cursor_map(Action.move(64, 0))


# --------------------------------------------------------------------------- bad input


def test_bad_actions_give_clear_errors() -> None:
    d = Desktop()
    with pytest.raises(ValueError, match="outside the 64x64 screen"):
        d.step(Action.move(64, 3))
    with pytest.raises(ValueError, match="negative"):
        Action.move(-1, 3)
    with pytest.raises(TypeError, match="int pixel"):
        Action(1.5, 3)  # type: ignore[arg-type]
    for key in ["A", "ab", "", "!", None]:
        with pytest.raises(ValueError, match="a-z or 0-9"):
            Action(1, 1, Event.KEY, key)
    with pytest.raises(ValueError, match="only KEY actions"):
        Action(1, 1, Event.LEFT_CLICK, "a")
    with pytest.raises(ValueError, match="unknown event"):
        Action(1, 1, 9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes an Action"):
        d.step((1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 64"):
        Desktop(size=100)
    with pytest.raises(LookupError, match="not open"):
        d.menu_item_center()
    assert d.state.steps == 0  # nothing bad got applied


def test_actions_round_trip_through_dicts() -> None:
    for a in [Action.move(1, 2), Action.typed(3, 4, "q"), Action.enter(0, 0), Action(np.int64(5), np.int32(6), 2)]:
        b = Action.from_dict(a.to_dict())
        assert b == a and type(b.x) is int and b.event is a.event
    assert Action.typed(0, 0, "a").key_index == 1 and Action.move(0, 0).key_index == 0
    with pytest.raises(ValueError, match="unknown event"):
        Action.from_dict({"x": 0, "y": 0, "event": "scroll"})
