"""The side panel: clock, gold, inventory, quest, a hint for what E does here, and the swarm box."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pygame

from engine.state import TICKS_PER_HOUR, WorldState
from game import text
from game.palette import (
    ACCENT, BORDER, GOLD, INK, INK_DIM, INK_FAINT, OK_GREEN, PANEL_BG, REFUSAL, SECTION_BG,
)

#: What the swarm box says when no swarm node runs (`hearth play --no-seed`, or before it reports).
SWARM_OFFLINE: dict[str, Any] = {"state": "offline", "note": "not seeding"}
SWARM_BOX_HEIGHT = 96
_PAD = 16


def time_of_day(hour: int) -> str:
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 21:
        return "evening"
    return "night"


def clock_text(state: WorldState) -> str:
    minute = (state.tick % TICKS_PER_HOUR) * 60 // TICKS_PER_HOUR
    return f"Day {state.day}  {state.hour:02d}:{minute:02d}  {time_of_day(state.hour)}"


def quest_lines(state: WorldState) -> tuple[str, str]:
    """(status line, detail) for the quest box."""
    q = state.quest
    if not q.started:
        giver = state.npc(q.giver)
        who = giver.name if giver else q.giver
        return "Not started", f"{who} may need a hand. {q.summary}"
    if q.complete:
        return "Complete", "Done. The village will remember it."
    step = q.current
    assert step is not None
    return f"Step {q.step + 1} of {len(q.steps)}", step.description


def draw_side_panel(surface: pygame.Surface, rect: pygame.Rect, state: WorldState, hint: str | None,
                    log: Sequence[tuple[str, bool]], swarm_status: Mapping[str, Any] | None) -> None:
    """``log`` holds the latest notices, newest first, each with whether it was a refusal."""
    surface.fill(PANEL_BG, rect)
    pygame.draw.line(surface, BORDER, rect.topleft, rect.bottomleft, 2)
    inner = rect.inflate(-2 * _PAD, 0)
    y = rect.top + 14
    text.draw(surface, (state.world_name or "Hearth").upper(), (inner.left, y), 30, ACCENT)
    y += 28
    text.draw(surface, clock_text(state), (inner.left, y), 20, INK_DIM)
    y += 26

    y = _section(surface, inner, y, "Purse")
    pygame.draw.circle(surface, GOLD, (inner.left + 8, y + 8), 7)
    pygame.draw.circle(surface, (150, 110, 30), (inner.left + 8, y + 8), 7, 1)
    text.draw(surface, f"{state.player.gold} gold", (inner.left + 22, y), 22, INK)
    y += 28

    y = _section(surface, inner, y, "Pack")
    inv = [(state.items[i].name if i in state.items else i, n)
           for i, n in sorted(state.player.inventory.items())]
    if not inv:
        text.draw(surface, "empty", (inner.left, y), 20, INK_FAINT)
        y += 22
    for name, n in inv[:6]:
        label = name if n == 1 else f"{name}  x{n}"
        text.draw(surface, text.ellipsize(f"- {label}", text.font(20), inner.width), (inner.left, y), 20, INK)
        y += 20
    if len(inv) > 6:
        text.draw(surface, f"and {len(inv) - 6} more", (inner.left, y), 18, INK_FAINT)
        y += 20
    y += 6

    y = _section(surface, inner, y, "Quest")
    q = state.quest
    text.draw(surface, q.title, (inner.left, y), 24, ACCENT)
    y += 22
    status, detail = quest_lines(state)
    text.draw(surface, status, (inner.left, y), 20, OK_GREEN if q.complete else INK_DIM)
    y += 20
    y = text.draw_wrapped(surface, detail, pygame.Rect(inner.left, y, inner.width, 100), 20, INK,
                          max_lines=4)
    y += 8

    swarm_rect = pygame.Rect(inner.left, rect.bottom - SWARM_BOX_HEIGHT - _PAD, inner.width,
                             SWARM_BOX_HEIGHT)
    controls = ["Arrows / WASD  walk", "E / Space  talk", "Enter  say   Esc  leave"]
    cy = swarm_rect.top - 14 - 20 * len(controls)
    _draw_log(surface, inner, y, cy - 36, log)
    if hint:
        text.draw(surface, text.ellipsize(hint, text.font(20), inner.width), (inner.left, cy - 28), 20,
                  GOLD)
    for line in controls:
        text.draw(surface, line, (inner.left, cy), 18, INK_FAINT)
        cy += 20
    draw_swarm_status(surface, swarm_rect, swarm_status if swarm_status is not None else SWARM_OFFLINE)


def _draw_log(surface: pygame.Surface, inner: pygame.Rect, y: int, bottom: int,
              log: Sequence[tuple[str, bool]]) -> None:
    if bottom - y < 40:
        return
    y = _section(surface, inner, y, "Lately")
    if not log:
        text.draw(surface, "nothing yet", (inner.left, y), 18, INK_FAINT)
        return
    f = text.font(18)
    for message, refusal in log:
        lines = text.wrap(message, f, inner.width)
        if y + 18 * len(lines) > bottom:
            break
        for line in lines:
            text.draw(surface, line, (inner.left, y), 18, REFUSAL if refusal else INK_DIM)
            y += 18
        y += 3


def _section(surface: pygame.Surface, inner: pygame.Rect, y: int, title: str) -> int:
    text.draw(surface, title.upper(), (inner.left, y), 18, INK_FAINT)
    pygame.draw.line(surface, BORDER, (inner.left + text.font(18).size(title.upper())[0] + 8, y + 7),
                     (inner.right, y + 7))
    return y + 18


def draw_swarm_status(surface: pygame.Surface, rect: pygame.Rect, status: Mapping[str, Any]) -> None:
    """The swarm box. ``status`` has a ``state`` ("offline", "seeding", ...), an optional ``note``,
    and any further keys, shown as ``key: value`` lines (peers, credits, jobs, ...)."""
    pygame.draw.rect(surface, SECTION_BG, rect, border_radius=6)
    pygame.draw.rect(surface, BORDER, rect, 2, border_radius=6)
    state = str(status.get("state", "unknown"))
    online = state not in ("offline", "unknown", "error")
    x, y = rect.left + 12, rect.top + 10
    pygame.draw.circle(surface, OK_GREEN if online else INK_FAINT, (x + 5, y + 8), 5)
    text.draw(surface, f"Swarm: {state}", (x + 16, y), 22, INK)
    y += 24
    inner = pygame.Rect(x, y, rect.width - 24, rect.bottom - y - 6)
    note = status.get("note")
    if note:
        y = text.draw_wrapped(surface, f"({note})", inner, 18, INK_DIM, max_lines=2)
    for key, value in status.items():
        if key in ("state", "note") or y > rect.bottom - 20:
            continue
        text.draw(surface, text.ellipsize(f"{key}: {value}", text.font(18), inner.width), (x, y), 18, INK_DIM)
        y += 18
