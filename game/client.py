"""The pygame-ce window: a fixed-step loop around ``GameSession.tick`` plus keyboard input.

Real time is accumulated and spent in whole ticks of 1/60 s (at most ``MAX_CATCH_UP_TICKS`` per
frame, so a stall does not snowball); the leftover fraction is handed to ``render`` to place
moving figures between tiles. Input only ever becomes commands queued on the session.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pygame

from engine.commands import AcceptQuest, Buy, Command, EndTalk, Give, Interact, Move, Sell
from engine.intent import offered_quest
from engine.state import MAX_SAY_CHARS, TICKS_PER_SECOND, WorldState
from game.help_overlay import HELP_KEY, draw_help
from game.notices import describe
from game.render import ClientUi, make_ui, nearest_npc, play_rect, render, window_size
from game.session import GameSession
from game.settings_screen import SETTINGS_KEY
from game.swarm_box import SwarmBox

if TYPE_CHECKING:
    from game.autosave import Autosaver
    from game.settings_screen import SettingsScreen
    from game.window_worker import WindowWorker

__all__ = ["run_window", "render", "parse_shortcut", "MAX_CATCH_UP_TICKS", "WindowHooks"]

TITLE = "Hearth — Emberbrook"
TICK_SECONDS = 1.0 / TICKS_PER_SECOND
MAX_CATCH_UP_TICKS = 5
MOVE_KEYS: dict[int, tuple[int, int]] = {
    pygame.K_UP: (0, -1), pygame.K_w: (0, -1),
    pygame.K_DOWN: (0, 1), pygame.K_s: (0, 1),
    pygame.K_LEFT: (-1, 0), pygame.K_a: (-1, 0),
    pygame.K_RIGHT: (1, 0), pygame.K_d: (1, 0),
}
SHORTCUT_HELP = "Try /buy ID, /sell ID, /give ID or /accept."
SWARM_POLL_SECONDS = 1.0


@dataclass
class WindowHooks:
    """What ``hearth play`` adds to the window: a way to ask it to close (set from a signal
    handler), the autosave, the in-window "New game" (returns a notice), the settings screen."""

    stop: threading.Event | None = None
    autosaver: Autosaver | None = None
    new_game: Callable[[], str] | None = None
    settings: SettingsScreen | None = None
    #: Serving other people's jobs while the player is away: told of every input.
    worker: WindowWorker | None = None


def run_window(session: GameSession, fps: int = 60, max_frames: int | None = None,
               screenshot: str | Path | None = None,
               swarm_status: SwarmBox | Callable[[], SwarmBox] | None = None,
               hooks: WindowHooks | None = None) -> int:
    """Open the window and play until it is closed (or ``max_frames`` frames have been shown, after
    which the last frame is saved to ``screenshot`` if given). Returns the exit code.
    ``swarm_status`` is the swarm box's content, or a function returning it, asked about once a
    second (the swarm node's thread never touches the window's state). ``hooks`` adds the
    autosave (offered every tick), the settings screen and New game, and a stop request, checked
    once a frame, that ends the loop between ticks."""
    hooks = hooks or WindowHooks()
    pygame.display.init()
    pygame.font.init()
    try:
        screen = pygame.display.set_mode(window_size(session.state))
        pygame.display.set_caption(TITLE)
        pygame.key.set_repeat(400, 40)  # held Backspace keeps deleting
        ui = make_ui(session.state)
        poll_swarm = swarm_status if callable(swarm_status) else None
        ui.swarm_status = None if poll_swarm else swarm_status
        loop = _InputState()
        clock = pygame.time.Clock()
        lag, last, frames = 0.0, time.perf_counter(), 0
        swarm_polled = float("-inf")
        save_error = None
        while True:
            if hooks.stop is not None and hooks.stop.is_set():
                return 0
            if poll_swarm is not None and last - swarm_polled >= SWARM_POLL_SECONDS:
                swarm_polled = last
                ui.swarm_status = poll_swarm()
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    return 0
                if hooks.worker is not None:
                    _tell_worker(hooks.worker, event)
                if not _handle_overlay_event(event, session, ui, hooks):
                    _handle_event(event, session, ui, loop)
            _sync_text_input(session.state, ui, loop)
            if hooks.worker is not None:
                hooks.worker.poll()

            now = time.perf_counter()
            lag += now - last
            last = now
            ticks = 0
            while lag >= TICK_SECONDS and ticks < MAX_CATCH_UP_TICKS:
                if not _overlay_open(ui, hooks):
                    _queue_walk(session, loop)
                for event in session.tick():
                    notice = describe(session.state, event)
                    if notice:
                        ui.notify(notice[0], session.state.tick, refusal=notice[1])
                if hooks.autosaver is not None:
                    hooks.autosaver.save_if_due(session.state)
                lag -= TICK_SECONDS
                ticks += 1
            if lag >= TICK_SECONDS:
                lag %= TICK_SECONDS  # too far behind: drop the backlog instead of spiralling
            if hooks.autosaver is not None and hooks.autosaver.error != save_error:
                save_error = hooks.autosaver.error
                if save_error:
                    ui.notify(save_error, session.state.tick, refusal=True)

            render(screen, session, lag / TICK_SECONDS, ui)
            if ui.help_open:
                draw_help(screen, play_rect(session.state))
            elif hooks.settings is not None and hooks.settings.is_open:
                hooks.settings.draw(screen, play_rect(session.state))
            pygame.display.flip()
            frames += 1
            if max_frames is not None and frames >= max_frames:
                if screenshot is not None:
                    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                    pygame.image.save(screen, str(screenshot))
                return 0
            clock.tick(fps)
    finally:
        pygame.display.quit()


_PLAYER_INPUT = (pygame.KEYDOWN, pygame.KEYUP, pygame.TEXTINPUT, pygame.MOUSEMOTION,
                 pygame.MOUSEBUTTONDOWN, pygame.MOUSEWHEEL)


def _tell_worker(worker: WindowWorker, event: pygame.event.Event) -> None:
    if event.type in _PLAYER_INPUT:
        worker.input_seen()
    elif event.type == pygame.WINDOWMINIMIZED:
        worker.set_minimised(True)
    elif event.type in (pygame.WINDOWRESTORED, pygame.WINDOWFOCUSGAINED):
        worker.set_minimised(False)


class _InputState:
    """Keyboard state the loop carries between frames."""

    def __init__(self) -> None:
        #: A direction pressed since the last step started: a quick tap still walks one tile.
        self.tapped: tuple[int, int] | None = None
        self.text_input_on = False


def _overlay_open(ui: ClientUi, hooks: WindowHooks) -> bool:
    return ui.help_open or (hooks.settings is not None and hooks.settings.is_open)


def _handle_overlay_event(event: pygame.event.Event, session: GameSession, ui: ClientUi,
                          hooks: WindowHooks) -> bool:
    """Keys for the help overlay and the settings screen (F1, F2 and whatever they take while
    open); returns whether the event was theirs."""
    settings = hooks.settings
    if event.type == pygame.TEXTINPUT:
        return _overlay_open(ui, hooks)  # typing goes nowhere while an overlay covers the map
    if event.type != pygame.KEYDOWN:
        return False
    if ui.help_open:
        if event.key in (HELP_KEY, pygame.K_ESCAPE):
            ui.help_open = False
        return True
    if settings is not None and settings.is_open:
        outcome = settings.handle_key(event.key)
        if outcome == "new_game" and hooks.new_game is not None:
            ui.input_text = ""
            ui.notify(hooks.new_game(), session.state.tick)
        elif outcome == "closed" and settings.message:
            ui.notify(settings.message, session.state.tick, refusal=settings.message_is_error)
        return True
    if event.key == HELP_KEY:
        ui.help_open = True
        return True
    if event.key == SETTINGS_KEY and settings is not None:
        settings.open()
        return True
    return False


def _queue_walk(session: GameSession, loop: _InputState) -> None:
    """Before each tick: queue a step in the held (or last tapped) direction once the previous step
    is done, so holding a key walks tile after tile without queueing refused moves."""
    p = session.state.player
    if p.talking_to is not None or p.move_left > 1:
        return
    pressed = pygame.key.get_pressed()
    held = next((d for k, d in MOVE_KEYS.items() if pressed[k]), None)
    direction = held or loop.tapped
    loop.tapped = None
    if direction is not None:
        session.queue(Move(*direction))


def _sync_text_input(state: WorldState, ui: ClientUi, loop: _InputState) -> None:
    talking = state.player.talking_to is not None
    if talking and not loop.text_input_on:
        pygame.key.start_text_input()
    elif not talking and loop.text_input_on:
        pygame.key.stop_text_input()
        ui.input_text = ""
    loop.text_input_on = talking


def _handle_event(event: pygame.event.Event, session: GameSession, ui: ClientUi, loop: _InputState) -> None:
    state = session.state
    npc_id = state.player.talking_to
    if event.type == pygame.TEXTINPUT:
        if npc_id is not None and loop.text_input_on:
            ui.input_text = (ui.input_text + event.text)[:MAX_SAY_CHARS]
        return
    if event.type != pygame.KEYDOWN:
        return
    if npc_id is not None:
        if event.key == pygame.K_ESCAPE:
            session.queue(EndTalk())
            ui.input_text = ""
        elif event.key in (pygame.K_RETURN, pygame.K_KP_ENTER):
            _submit_line(session, ui, npc_id)
        elif event.key == pygame.K_BACKSPACE:
            ui.input_text = ui.input_text[:-1]
        return
    if event.key in MOVE_KEYS:
        loop.tapped = MOVE_KEYS[event.key]
    elif event.key in (pygame.K_e, pygame.K_SPACE):
        npc = nearest_npc(state)
        if npc is None:
            ui.notify("Nobody close enough to talk to.", state.tick)
        else:
            session.queue(Interact(npc=npc.id))


def _submit_line(session: GameSession, ui: ClientUi, npc_id: str) -> None:
    line = ui.input_text.strip()
    ui.input_text = ""
    if not line:
        return
    if not line.startswith("/"):
        session.talk(npc_id, line)
        return
    result = parse_shortcut(session.state, npc_id, line)
    if isinstance(result, str):
        ui.notify(result, session.state.tick, refusal=True)
    else:
        session.queue(result)


def parse_shortcut(state: WorldState, npc_id: str, line: str) -> Command | str:
    """``/buy ITEM [QTY]``, ``/sell ITEM [QTY]``, ``/give ITEM [QTY]`` or ``/accept`` as a command
    for the NPC being talked to; a message saying what is wrong otherwise. ITEM is an item id or
    its name."""
    words = line[1:].split()
    if not words:
        return SHORTCUT_HELP
    verb, args = words[0].lower(), words[1:]
    if verb == "accept":
        offered = offered_quest(state, state.npc(npc_id)) if state.npc(npc_id) else None
        return AcceptQuest(quest=(offered or state.quest).id)
    if verb not in ("buy", "sell", "give"):
        return f"Unknown command /{verb}. {SHORTCUT_HELP}"
    qty = 1
    if len(args) > 1 and args[-1].isdigit():
        qty = int(args.pop())
    if not args:
        return f"/{verb} needs an item, e.g. /{verb} bread."
    item = resolve_item(state, " ".join(args))
    if item is None:
        return f"No item called '{' '.join(args)}'."
    kind = {"buy": Buy, "sell": Sell, "give": Give}[verb]
    return kind(npc=npc_id, item=item, qty=qty)


def resolve_item(state: WorldState, words: str) -> str | None:
    key = words.strip().lower()
    if key in state.items:
        return key
    if key.replace(" ", "_") in state.items:
        return key.replace(" ", "_")
    for item_id, item in sorted(state.items.items()):
        if item.name.lower() == key:
            return item_id
    return None
