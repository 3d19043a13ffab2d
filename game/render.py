"""Drawing one frame. ``render`` only reads the session: the world changes in ``session.tick`` alone.

Entities are drawn between the tile they left and the tile they are entering, by how far the current
step has gone plus ``alpha``, the fraction of a tick the clock has accumulated since the last one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pygame

from engine import rules
from engine.state import NPC_MOVE_TICKS, PLAYER_MOVE_TICKS, TICKS_PER_SECOND, Npc, TileMap, WorldState
from game import text
from game.art import Art, load_art
from game.dialogue_panel import HEIGHT as DIALOGUE_HEIGHT
from game.dialogue_panel import draw_dialogue
from game.hud import draw_side_panel
from game.palette import BUBBLE_BG, BUBBLE_INK, INK, LABEL_BG, REFUSAL, SECTION_BG
from game.session import GameSession
from game.skin_names import SkinNames
from game.swarm_box import SwarmBox

TILE_PX = 24
#: Characters are drawn a little larger than a tile (feet on the tile, head over the row above),
#: so faces and costumes stay readable at this scale.
CHAR_PX = 30
PANEL_WIDTH = 320
#: How long an NPC's latest line floats over its head, and a notice stays on screen.
SPEECH_TICKS = 5 * TICKS_PER_SECOND
NOTICE_TICKS = 3 * TICKS_PER_SECOND
LOG_LENGTH = 6


@dataclass
class Notice:
    text: str
    tick: int
    refusal: bool = False


@dataclass
class ClientUi:
    """What the window keeps between frames that is not world state: the art, the line being
    typed, the latest notice, and what the swarm last reported."""

    art: Art
    input_text: str = ""
    notice: Notice | None = None
    #: The latest notices, newest last, for the side panel's log.
    log: deque[Notice] = field(default_factory=lambda: deque(maxlen=LOG_LENGTH))
    swarm_status: SwarmBox | None = None
    #: The F1 help overlay is showing.
    help_open: bool = False
    #: Names of the skins villagers wear, read from the skin store once each.
    skins: SkinNames = field(default_factory=SkinNames)
    _map_cache: tuple[str, pygame.Surface] | None = field(default=None, repr=False)

    def notify(self, message: str, tick: int, refusal: bool = False) -> None:
        self.notice = Notice(message, tick, refusal)
        self.log.append(self.notice)

    def map_surface(self, state: WorldState) -> pygame.Surface:
        """The static map, drawn once (tiles never change during play)."""
        if self._map_cache is None or self._map_cache[0] != state.map.tiles:
            m = state.map
            surf = pygame.Surface((m.width * TILE_PX, m.height * TILE_PX))
            for y in range(m.height):
                for x in range(m.width):
                    code = m.at(x, y)
                    tile = self.art.tile(code, x, y, upright=_runs_north_south(m, x, y, code))
                    surf.blit(tile, (x * TILE_PX, y * TILE_PX))
            self._map_cache = (m.tiles, surf)
        return self._map_cache[1]


def _runs_north_south(m: TileMap, x: int, y: int, code: str) -> bool:
    def same(nx: int, ny: int) -> bool:
        return 0 <= nx < m.width and 0 <= ny < m.height and m.at(nx, ny) == code

    return (same(x, y - 1) or same(x, y + 1)) and not (same(x - 1, y) or same(x + 1, y))


def make_ui(state: WorldState) -> ClientUi:
    return ClientUi(art=load_art(TILE_PX, CHAR_PX, [n.id for n in state.npcs]))


def window_size(state: WorldState) -> tuple[int, int]:
    return state.map.width * TILE_PX + PANEL_WIDTH, state.map.height * TILE_PX


def play_rect(state: WorldState) -> pygame.Rect:
    return pygame.Rect(0, 0, state.map.width * TILE_PX, state.map.height * TILE_PX)


def dialogue_rect(state: WorldState) -> pygame.Rect:
    """Along the bottom of the map, unless the conversation itself is down there: then along the top,
    so the panel never hides who is talking."""
    play = play_rect(state)
    rect = pygame.Rect(8, play.bottom - DIALOGUE_HEIGHT - 8, play.width - 16, DIALOGUE_HEIGHT)
    if (state.player.y + 1 + rules.TALK_RANGE) * TILE_PX > rect.top:
        rect.top = play.top + 8
    return rect


def panel_rect(state: WorldState) -> pygame.Rect:
    play = play_rect(state)
    return pygame.Rect(play.right, 0, PANEL_WIDTH, play.height)


def nearest_npc(state: WorldState) -> Npc | None:
    """The closest NPC the player could talk to from here (ties: the first by id)."""
    p = state.player
    best: tuple[int, Npc] | None = None
    for npc in state.npcs:
        if rules.near(state, npc):
            d = abs(npc.x - p.x) + abs(npc.y - p.y)
            if best is None or d < best[0]:
                best = (d, npc)
    return best[1] if best else None


def drawn_tile_pos(x: int, y: int, from_x: int, from_y: int, move_left: int, move_ticks: int,
                   alpha: float) -> tuple[float, float]:
    if move_left <= 0:
        return float(x), float(y)
    t = min(1.0, max(0.0, (move_ticks - move_left + alpha) / move_ticks))
    return from_x + (x - from_x) * t, from_y + (y - from_y) * t


def render(surface: pygame.Surface, session: GameSession, alpha: float, ui: ClientUi | None = None) -> None:
    """Draw the whole window for the session's current state."""
    state = session.state
    ui = ui or make_ui(state)
    play = play_rect(state)
    surface.set_clip(play)
    surface.blit(ui.map_surface(state), play.topleft)
    anchors = _draw_characters(surface, state, ui.art, alpha)
    _draw_daylight(surface, play, state)
    for npc in state.npcs:
        head_x, head_y = anchors[npc.id]
        _draw_label(surface, play, npc.name, head_x, head_y)
        line = _recent_line(state, npc)
        if line:
            _draw_bubble(surface, play, line, head_x, head_y - 18)
    talking = state.npc(state.player.talking_to) if state.player.talking_to else None
    notice_top = play.top + 12
    if talking is not None:
        pending = session.pending  # read once: the responder thread may clear it
        partial = pending.partial if pending is not None and pending.turn.npc_id == talking.id else None
        panel = dialogue_rect(state)
        draw_dialogue(surface, panel, state, talking, partial, ui.input_text,
                      getattr(session, "voice_label", ""), ui.skins)
        if panel.top <= notice_top:
            notice_top = panel.bottom + 12
    _draw_notice(surface, play, notice_top, state, ui.notice)
    surface.set_clip(None)
    near = nearest_npc(state)
    if talking is not None:
        hint = f"Talking with {talking.name}"
    elif near is not None:
        hint = f"E: talk to {near.name}"
    else:
        hint = None
    log = [(n.text, n.refusal) for n in reversed(ui.log)]
    draw_side_panel(surface, panel_rect(state), state, hint, log, ui.swarm_status)


# ---- the world layer ---------------------------------------------------------------------------

def _draw_characters(surface: pygame.Surface, state: WorldState, art: Art,
                     alpha: float) -> dict[str, tuple[int, int]]:
    """Draw everyone back to front; returns each NPC's head point (for labels and bubbles)."""
    p = state.player
    figures = [("player", p.facing, p.x, p.y, p.from_x, p.from_y, p.move_left, PLAYER_MOVE_TICKS)]
    figures += [(n.id, n.facing, n.x, n.y, n.from_x, n.from_y, n.move_left, NPC_MOVE_TICKS)
                for n in state.npcs]
    placed = []
    for char_id, facing, x, y, fx, fy, left, ticks in figures:
        tx, ty = drawn_tile_pos(x, y, fx, fy, left, ticks, alpha)
        # a one-pixel hop mid-step, so walking reads as walking
        moving = left > 0 and 0.25 < ((ticks - left + alpha) / ticks) % 1.0 < 0.75
        placed.append((ty, tx, char_id, facing, moving))
    heads: dict[str, tuple[int, int]] = {}
    for ty, tx, char_id, facing, moving in sorted(placed):
        sprite = art.character(char_id, facing)
        cx = round(tx * TILE_PX + TILE_PX / 2)
        foot = round((ty + 1) * TILE_PX) + 1 - (1 if moving else 0)
        surface.blit(sprite, (cx - sprite.get_width() // 2, foot - sprite.get_height()))
        heads[char_id] = (cx, foot - sprite.get_height())
    return heads


def _draw_daylight(surface: pygame.Surface, play: pygame.Rect, state: WorldState) -> None:
    """Dusk, night and dawn as a blue shade over the map."""
    shade = {17: 20, 18: 40, 19: 70, 20: 100, 21: 120, 22: 130, 23: 130, 0: 130, 1: 130, 2: 130, 3: 130,
             4: 120, 5: 90, 6: 50, 7: 20}.get(state.hour, 0)
    if shade:
        veil = pygame.Surface(play.size, pygame.SRCALPHA)
        veil.fill((16, 20, 56, shade))
        surface.blit(veil, play.topleft)


def _draw_label(surface: pygame.Surface, play: pygame.Rect, name: str, cx: int, top: int) -> None:
    img = text.font(18).render(name, True, INK)
    box = img.get_rect(midbottom=(cx, top + 2)).inflate(8, 2)
    box.clamp_ip(play)
    bg = pygame.Surface(box.size, pygame.SRCALPHA)
    pygame.draw.rect(bg, LABEL_BG, bg.get_rect(), border_radius=4)
    surface.blit(bg, box.topleft)
    surface.blit(img, img.get_rect(center=box.center))


def _recent_line(state: WorldState, npc: Npc) -> str | None:
    for turn in reversed(npc.memory):
        if turn.speaker == npc.id:
            return turn.text if state.tick - turn.tick < SPEECH_TICKS else None
    return None


def _draw_bubble(surface: pygame.Surface, play: pygame.Rect, line: str, cx: int, bottom: int) -> None:
    f = text.font(18)
    lines = text.wrap(line, f, 200)
    if len(lines) > 2:
        lines = [lines[0], text.ellipsize(lines[1] + "…", f, 200)]
    w = max(f.size(s)[0] for s in lines) + 14
    h = len(lines) * f.get_linesize() + 8
    box = pygame.Rect(0, 0, w, h)
    box.midbottom = (cx, bottom - 5)
    box.clamp_ip(play)
    tail_x = min(max(cx, box.left + 8), box.right - 8)
    pygame.draw.polygon(surface, BUBBLE_BG, [(tail_x - 5, box.bottom - 1), (tail_x + 5, box.bottom - 1),
                                             (tail_x, box.bottom + 5)])
    pygame.draw.rect(surface, BUBBLE_BG, box, border_radius=6)
    pygame.draw.rect(surface, (120, 110, 100), box, 1, border_radius=6)
    y = box.top + 4
    for s in lines:
        surface.blit(f.render(s, True, BUBBLE_INK), (box.left + 7, y))
        y += f.get_linesize()


def _draw_notice(surface: pygame.Surface, play: pygame.Rect, top: int, state: WorldState,
                 notice: Notice | None) -> None:
    if notice is None or not (0 <= state.tick - notice.tick < NOTICE_TICKS):
        return
    img = text.font(22).render(notice.text, True, INK)
    box = img.get_rect(midtop=(play.centerx, top + 6)).inflate(24, 12)
    pygame.draw.rect(surface, SECTION_BG, box, border_radius=8)
    pygame.draw.rect(surface, REFUSAL if notice.refusal else (110, 96, 84), box, 2, border_radius=8)
    surface.blit(img, img.get_rect(center=box.center))
