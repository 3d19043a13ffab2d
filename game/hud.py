"""The side panel: clock, gold, inventory, quest, a hint for what E does here, and the swarm box."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import pygame

from engine.state import TICKS_PER_HOUR, Quest, WorldState
from game import text
from game.palette import (
    ACCENT, BORDER, GOLD, INK, INK_DIM, INK_FAINT, OK_GREEN, PANEL_BG, REFUSAL, SECTION_BG,
)
from game.swarm_box import SwarmBox

if TYPE_CHECKING:
    from game.window_worker import JobsStatus
    from swarm.torrent import SwarmStatus

#: What the swarm box says when the window has no swarm node (`hearth play --no-seed`).
NO_SWARM_NOTE = "not seeding"
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


def quest_lines(state: WorldState, quest: Quest | None = None) -> tuple[str, str]:
    """(status line, detail) for a quest (the village's first unless named) in the quest box."""
    q = quest or state.quest
    if not q.started:
        giver = state.npc(q.giver)
        who = giver.name if giver else q.giver
        return "Not started", f"{who} may need a hand. {q.summary}"
    if q.complete:
        return "Complete", "Done. The village will remember it."
    step = q.current
    assert step is not None
    return f"Step {q.step + 1} of {len(q.steps)}", step.description


def board_quests(state: WorldState, most: int = 2) -> tuple[list[Quest], str]:
    """The quests the side panel shows (those under way, else the next one on offer, else the
    first) and a line about the others ("" if none)."""
    quests = state.all_quests
    shown = ([q for q in quests if q.started and not q.complete]
             or [q for q in quests if not q.started][:1] or quests[:1])[:most]
    others = [q for q in quests if q not in shown]
    if not others:
        return shown, ""
    done = sum(q.complete for q in others)
    return shown, f"{len(others)} more quest{'s' if len(others) > 1 else ''}, {done} done"


def draw_side_panel(surface: pygame.Surface, rect: pygame.Rect, state: WorldState, hint: str | None,
                    log: Sequence[tuple[str, bool]], swarm_status: SwarmBox | None) -> None:
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

    shown, rest = board_quests(state)
    y = _section(surface, inner, y, "Quests" if len(state.all_quests) > 1 else "Quest")
    for i, q in enumerate(shown):
        text.draw(surface, q.title, (inner.left, y), 24 if i == 0 else 20, ACCENT)
        y += 22
        status, detail = quest_lines(state, q)
        text.draw(surface, status, (inner.left, y), 20, OK_GREEN if q.complete else INK_DIM)
        y += 20
        y = text.draw_wrapped(surface, detail, pygame.Rect(inner.left, y, inner.width, 100), 20, INK,
                              max_lines=4 if len(shown) == 1 else 2)
        y += 6
    if rest:
        text.draw(surface, rest, (inner.left, y), 18, INK_FAINT)
        y += 20
    y += 2

    swarm_rect = pygame.Rect(inner.left, rect.bottom - SWARM_BOX_HEIGHT - _PAD, inner.width,
                             SWARM_BOX_HEIGHT)
    controls = ["Arrows / WASD  walk", "E / Space  talk", "Enter  say   Esc  leave",
                "F1  help   F2  settings"]
    cy = swarm_rect.top - 14 - 20 * len(controls)
    _draw_log(surface, inner, y, cy - 36, log)
    if hint:
        text.draw(surface, text.ellipsize(hint, text.font(20), inner.width), (inner.left, cy - 28), 20,
                  GOLD)
    for line in controls:
        text.draw(surface, line, (inner.left, cy), 18, INK_FAINT)
        cy += 20
    draw_swarm_status(surface, swarm_rect, swarm_status)


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


class SwarmBoxText(NamedTuple):
    """The swarm box in words: a state, whether to light the dot, a note and detail lines."""

    state: str
    online: bool
    note: str | None
    lines: list[str]


def _node_text(box: SwarmBox | None) -> SwarmBoxText:
    if box is None:
        return SwarmBoxText("offline", False, NO_SWARM_NOTE, [])
    if box.failed:
        return SwarmBoxText("error", False, box.note, [])
    node = box.node
    if node is None:
        return SwarmBoxText("off", False, box.note, [])
    if not node.running:
        return SwarmBoxText("offline", False, box.note, [])
    state = "fetching" if node.fetching else ("seeding" if node.seeded else "idle")
    return SwarmBoxText(state, True, box.note, [
        f"peers: {node.peers}, DHT nodes: {node.dht_nodes}",
        f"rates: up {rate_text(node.upload_rate)}, down {rate_text(node.download_rate)}",
        f"sharing: {sharing_text(node)}",
    ])


def swarm_box_text(box: SwarmBox | None) -> SwarmBoxText:
    """``box`` None: the window has no swarm node, or it has not reported yet. Serving jobs, when
    the window does, adds its lines at the foot."""
    text = _node_text(box)
    if box is not None and box.jobs is not None:
        return text._replace(lines=text.lines + jobs_lines(box.jobs))
    return text


_PAUSED = {"player_present": "paused while you play", "busy_cpu": "paused: the machine is busy",
           "on_battery": "paused on battery", "off": "off (F2: serve while away)",
           "loading": "loading the model"}


def jobs_lines(jobs: JobsStatus) -> list[str]:
    """Serving other people's jobs, in words: the state, then what was served and earned."""
    if jobs.state == "failed":
        return [f"jobs: cannot serve ({jobs.note})"]
    head = "jobs: serving" if jobs.state == "serving" else f"jobs: {_PAUSED.get(jobs.state, jobs.state)}"
    out = [head]
    if jobs.shards or jobs.receipts:
        out.append(f"served {jobs.shards} shard{'s' if jobs.shards != 1 else ''}, "
                   f"{jobs.tokens} tokens; {jobs.receipts} receipt{'s' if jobs.receipts != 1 else ''}")
        out.append(f"earned while away: {gold_text(jobs.earned)} gold")
    return out


def gold_text(micro: int) -> str:
    """Micro-gold as gold, without trailing zeros: 460 -> ``0.00046``."""
    whole, frac = divmod(int(micro), 1_000_000)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


def rate_text(bytes_per_second: float) -> str:
    """A transfer rate in decimal units (1 KB = 1000 bytes)."""
    n = float(bytes_per_second)
    for unit in ("B/s", "KB/s"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B/s" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} MB/s"


def sharing_text(node: SwarmStatus) -> str:
    """What is seeded, counted by kind: ``2 models, 1 skin``."""
    kinds = [s.ref.kind for s in node.seeded]
    counts = [(k, kinds.count(k)) for k in ("model", "skin") if k in kinds]
    return ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in counts) or "nothing yet"


def draw_swarm_status(surface: pygame.Surface, rect: pygame.Rect, box: SwarmBox | None) -> None:
    """The swarm box: the state with a dot lit while the node runs, the note, then detail lines
    as far as they fit."""
    pygame.draw.rect(surface, SECTION_BG, rect, border_radius=6)
    pygame.draw.rect(surface, BORDER, rect, 2, border_radius=6)
    shown = swarm_box_text(box)
    x, y = rect.left + 12, rect.top + 10
    pygame.draw.circle(surface, OK_GREEN if shown.online else INK_FAINT, (x + 5, y + 8), 5)
    text.draw(surface, f"Swarm: {shown.state}", (x + 16, y), 22, INK)
    y += 24
    inner = pygame.Rect(x, y, rect.width - 24, rect.bottom - y - 6)
    if shown.note:
        y = text.draw_wrapped(surface, f"({shown.note})", inner, 18, INK_DIM, max_lines=2)
    for line in shown.lines:
        if y > rect.bottom - 20:
            break
        text.draw(surface, text.ellipsize(line, text.font(18), inner.width), (x, y), 18, INK_DIM)
        y += 18
