"""The pygame-ce window under SDL's dummy video driver: it draws, shows the conversation, turns keys
into commands, and never changes the world outside ``session.tick``."""

from __future__ import annotations

import os
import time

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402

from engine.commands import AcceptQuest, Buy, Give, Interact, Move, Sell  # noqa: E402
from engine.hashing import state_hash  # noqa: E402
from engine.state import PLAYER_MOVE_TICKS  # noqa: E402
from engine.world import TILE_KINDS, new_game  # noqa: E402
from game import art as art_module  # noqa: E402
from game import client  # noqa: E402
from game.client import parse_shortcut, run_window  # noqa: E402
from game.render import (  # noqa: E402
    ClientUi, dialogue_rect, drawn_tile_pos, make_ui, panel_rect, play_rect, render, window_size,
)
from game.session import GameSession  # noqa: E402
from npc.scripted import ScriptedResponder  # noqa: E402

BESIDE_MAREN = (10, 5)


@pytest.fixture
def session():
    s = GameSession(new_game(seed=7), ScriptedResponder())
    yield s
    s.close()


@pytest.fixture
def talking_session(session):
    """The traveller at Maren's bar, one exchange already committed."""
    p = session.state.player
    p.x, p.y = p.from_x, p.from_y = BESIDE_MAREN
    session.queue(Interact("maren"))
    session.tick()
    assert session.state.player.talking_to == "maren"
    session.talk("maren", "Can I help with anything?")
    for _ in range(600):
        time.sleep(1 / 240)
        session.tick()
        if session.pending is None and not session.busy:
            break
    assert session.state.npc("maren").memory[-1].speaker == "maren"
    return session


@pytest.fixture
def offscreen():
    """Fonts and an off-screen surface, without opening a window."""
    pygame.font.init()
    yield
    pygame.font.quit()


def pixels(path) -> np.ndarray:
    return pygame.surfarray.array3d(pygame.image.load(str(path))).swapaxes(0, 1)  # rows, columns, rgb


def region(img: np.ndarray, rect: pygame.Rect) -> np.ndarray:
    return img[rect.top:rect.bottom, rect.left:rect.right]


@pytest.mark.slow
def test_window_frame_is_drawn(session, tmp_path):
    shot = tmp_path / "frame.png"
    assert run_window(session, max_frames=4, screenshot=shot) == 0
    img = pixels(shot)
    w, h = window_size(session.state)
    assert img.shape == (h, w, 3)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 500, "a real frame has texture, text and sprites"
    game_map = region(img, play_rect(session.state)).reshape(-1, 3).mean(axis=0)
    panel = region(img, panel_rect(session.state)).reshape(-1, 3).mean(axis=0)
    assert np.abs(game_map - panel).sum() > 60, "the map and the side panel look alike"


def test_window_advances_in_whole_ticks(session, tmp_path):
    before = session.state.tick
    run_window(session, max_frames=10)
    advanced = session.state.tick - before
    assert 0 < advanced <= 10 * client.MAX_CATCH_UP_TICKS


def test_dialogue_panel_appears_when_talking(session, tmp_path):
    plain, talking = tmp_path / "plain.png", tmp_path / "talking.png"
    p = session.state.player
    p.x, p.y = p.from_x, p.from_y = BESIDE_MAREN
    run_window(session, max_frames=2, screenshot=plain)
    session.queue(Interact("maren"))
    run_window(session, max_frames=4, screenshot=talking)
    assert session.state.player.talking_to == "maren"
    rect = dialogue_rect(session.state)
    assert rect.colliderect(play_rect(session.state))
    before, after = region(pixels(plain), rect), region(pixels(talking), rect)
    changed = np.any(before != after, axis=2).mean()
    assert changed > 0.5, f"only {changed:.0%} of the dialogue area changed"
    assert after.mean() < before.mean(), "the panel is darker than the village under it"


def test_dialogue_panel_keeps_clear_of_the_conversation(session):
    state = session.state
    state.player.y = 4
    assert dialogue_rect(state).top > play_rect(state).centery
    state.player.y = state.map.height - 3
    assert dialogue_rect(state).bottom < play_rect(state).centery


@pytest.mark.slow
def test_render_only_reads_state(talking_session, offscreen):
    s = talking_session
    surface = pygame.Surface(window_size(s.state))
    ui = make_ui(s.state)
    ui.input_text = "/buy bread"
    ui.notify("Can't buy: not enough gold.", s.state.tick, refusal=True)
    s.state.player.move_left, s.state.player.from_y = 4, s.state.player.y + 1  # mid-step
    before = state_hash(s.state)
    for alpha in (0.0, 0.5, 0.99):
        render(surface, s, alpha, ui)
    assert state_hash(s.state) == before
    assert len(np.unique(pygame.surfarray.array3d(surface).reshape(-1, 3), axis=0)) > 500


def drawn_line_at(frame: np.ndarray, rect: pygame.Rect, line: pygame.Surface) -> bool:
    """Whether the text ``line`` (rendered without a background) is drawn somewhere in ``rect`` of
    ``frame`` (columns, rows, rgb): there every fully inked pixel of the text has one colour, and
    the pixels the text leaves clear are (nearly all) another."""
    alpha = pygame.surfarray.array_alpha(line)
    inked, clear = np.argwhere(alpha == 255), np.argwhere(alpha == 0)
    rgb = frame[rect.left:rect.right, rect.top:rect.bottom].astype(np.int32)
    area = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]  # one number per colour
    w, h = area.shape[0] - alpha.shape[0] + 1, area.shape[1] - alpha.shape[1] + 1
    ax, ay = inked[0]
    colour = area[ax:ax + w, ay:ay + h]  # the text's colour if it starts at each place
    fits = np.ones((w, h), bool)
    for dx, dy in inked[1:]:
        fits &= area[dx:dx + w, dy:dy + h] == colour
    for x, y in np.argwhere(fits):
        if (area[x + clear[:, 0], y + clear[:, 1]] != colour[x, y]).mean() > 0.9:
            return True
    return False


def test_streaming_reply_is_shown(talking_session, offscreen):
    """The words of a reply still being spoken are drawn in the conversation as they arrive."""
    from game import text
    from game.dialogue_panel import _SIZE
    s = talking_session
    surface = pygame.Surface(window_size(s.state))
    ui = make_ui(s.state)
    rect = dialogue_rect(s.state)
    streamed = text.font(_SIZE).render("Maren: The bell cracked last…", True, (255, 255, 255))
    render(surface, s, 0.0, ui)
    assert not drawn_line_at(pygame.surfarray.array3d(surface), rect, streamed)
    s.talk("maren", "Tell me more")
    s.pending.partial = "The bell cracked last"
    render(surface, s, 0.0, ui)
    assert drawn_line_at(pygame.surfarray.array3d(surface), rect, streamed)


def test_interpolation_between_tiles():
    assert drawn_tile_pos(5, 5, 4, 5, 0, PLAYER_MOVE_TICKS, 0.7) == (5.0, 5.0)
    x, y = drawn_tile_pos(5, 5, 4, 5, PLAYER_MOVE_TICKS - 1, PLAYER_MOVE_TICKS, 0.0)
    assert (x, y) == (pytest.approx(4 + 1 / PLAYER_MOVE_TICKS), 5.0)
    x, _ = drawn_tile_pos(5, 5, 4, 5, 1, PLAYER_MOVE_TICKS, 0.5)
    assert 4 < x < 5
    assert drawn_tile_pos(5, 5, 4, 5, 1, PLAYER_MOVE_TICKS, 5.0) == (5.0, 5.0)  # clamped


def test_shortcuts_become_commands(session):
    state = session.state
    assert parse_shortcut(state, "maren", "/buy bread") == Buy(npc="maren", item="bread")
    assert parse_shortcut(state, "maren", "/buy loaf of bread 2") == Buy(npc="maren", item="bread", qty=2)
    assert parse_shortcut(state, "tobin", "/sell horseshoe") == Sell(npc="tobin", item="horseshoe")
    assert parse_shortcut(state, "bram", "/give iron_ingot") == Give(npc="bram", item="iron_ingot")
    assert parse_shortcut(state, "maren", "/accept") == AcceptQuest(quest=state.quest.id)
    assert isinstance(parse_shortcut(state, "maren", "/dance"), str)
    assert isinstance(parse_shortcut(state, "maren", "/buy unicorn"), str)
    assert isinstance(parse_shortcut(state, "maren", "/buy"), str)


def test_keys_queue_commands(session):
    pygame.display.init()
    try:
        pygame.display.set_mode((64, 64))
        state = session.state
        p = state.player
        p.x, p.y = p.from_x, p.from_y = BESIDE_MAREN
        ui, loop = make_ui(state), client._InputState()
        key = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_e, mod=0, unicode="e", scancode=0)
        client._handle_event(key, session, ui, loop)
        assert session._inputs == [Interact(npc="maren")]
        session.tick()
        client._sync_text_input(state, ui, loop)
        for ch in "hello":
            client._handle_event(pygame.event.Event(pygame.TEXTINPUT, text=ch), session, ui, loop)
        assert ui.input_text == "hello"
        enter = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN, mod=0, unicode="\r", scancode=0)
        client._handle_event(enter, session, ui, loop)
        assert ui.input_text == "" and session.pending is not None
        session.tick()
        assert session.state.npc("maren").memory[-1].text == "hello"
        esc = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode="\x1b", scancode=0)
        client._handle_event(esc, session, ui, loop)
        session.tick()
        assert session.state.player.talking_to is None
        # a tap walks one tile once the previous step is over
        client._sync_text_input(session.state, ui, loop)
        left = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_LEFT, mod=0, unicode="", scancode=0)
        client._handle_event(left, session, ui, loop)
        client._queue_walk(session, loop)
        assert session._inputs == [Move(-1, 0)]
    finally:
        pygame.display.quit()


@pytest.mark.slow
def test_missing_art_falls_back_to_shapes(session, tmp_path, monkeypatch, offscreen):
    monkeypatch.setattr(art_module, "ART_DIR", tmp_path)
    ui = make_ui(session.state)
    assert len(ui.art.fallbacks) == len(TILE_KINDS) + 1 + len(session.state.npcs)
    surface = pygame.Surface(window_size(session.state))
    render(surface, session, 0.0, ui)
    assert len(np.unique(pygame.surfarray.array3d(surface).reshape(-1, 3), axis=0)) > 20


def test_shipped_art_covers_every_tile_and_character(session, offscreen):
    ui: ClientUi = make_ui(session.state)
    assert ui.art.fallbacks == []


def test_notices_skip_walking_into_walls(session):
    from engine.commands import Rejected, Rejection, Traded
    from game.notices import describe

    state = session.state
    assert describe(state, Rejected(command="move", reason=Rejection.BLOCKED)) is None
    text, refusal = describe(state, Rejected(command="buy", reason=Rejection.INSUFFICIENT_GOLD))
    assert refusal and "not enough gold" in text
    text, refusal = describe(state, Traded(npc="maren", item="ale", qty=1, gold=4, to_player=True))
    assert not refusal and "mug of ale" in text and "Maren" in text


def test_dialogue_panel_names_the_skin_and_its_creator(tmp_path, offscreen):
    from game.dialogue_panel import draw_dialogue, voice_name
    from game.skin_names import SkinNames
    from game.village_skins import BUNDLES_DIR
    from npc.skins.bundle import read_signed
    from npc.skins.store import SkinStore

    signed = read_signed(BUNDLES_DIR / "pirate")
    skin_id = SkinStore(tmp_path).install(BUNDLES_DIR / "pirate")
    names = SkinNames(tmp_path)
    state = new_game(seed=1)
    tobin = state.npc("tobin")
    assert voice_name(tobin, names) == "base voice"
    tobin.skin = skin_id
    label = voice_name(tobin, names)
    assert label == f"Saltbeard, by {signed.manifest.creator[:16]}"
    assert skin_id[:16] not in label
    tobin.skin = "ab" * 32
    assert voice_name(tobin, names) == f"skin {'ab' * 8}… (not installed)"
    surface = pygame.Surface(window_size(state))
    draw_dialogue(surface, dialogue_rect(state), state, tobin, None, "", "scripted lines", names)
