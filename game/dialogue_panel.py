"""The conversation panel along the bottom of the map: who is talking, what was said, the reply as it
streams in, the player's input line, and what this NPC trades."""

from __future__ import annotations

import pygame

from engine.intent import offered_quest
from engine.state import Npc, WorldState
from game import text
from game.palette import (
    ACCENT, BORDER, DIALOGUE_BG, INK, INK_DIM, INK_FAINT, NPC_INK, PLAYER_INK, SECTION_BG,
)
from game.skin_names import SkinNames

HEIGHT = 236
WARES_WIDTH = 300
COMMAND_HELP = "/buy ID   /sell ID   /give ID   /accept"
_SIZE = 20
_PAD = 14


def voice_name(npc: Npc, skins: SkinNames | None = None) -> str:
    """The skin the NPC wears by name and creator ("Saltbeard, by 1a2b…"), or "base voice"."""
    if npc.skin is None:
        return "base voice"
    return (skins or SkinNames()).label(npc.skin)


def transcript(npc: Npc, partial: str | None) -> list[tuple[str, tuple[int, int, int]]]:
    """(line, colour) per turn, oldest first; ``partial`` is the reply still being spoken."""
    out = []
    for turn in npc.memory:
        if turn.speaker == "player":
            out.append((f"You: {turn.text}", PLAYER_INK))
        else:
            out.append((f"{npc.name}: {turn.text}", NPC_INK))
    if partial is not None:
        out.append((f"{npc.name}: {partial}…" if partial else f"{npc.name} is thinking…", INK_DIM))
    return out


def draw_dialogue(surface: pygame.Surface, rect: pygame.Rect, state: WorldState, npc: Npc,
                  partial: str | None, input_text: str, speaker: str = "",
                  skins: SkinNames | None = None) -> None:
    """``speaker`` says what renders the villagers' words (the local model, scripted lines);
    ``skins`` names the skin the NPC wears."""
    shade = pygame.Surface(rect.size, pygame.SRCALPHA)
    shade.fill(DIALOGUE_BG)
    surface.blit(shade, rect.topleft)
    pygame.draw.rect(surface, BORDER, rect, 2, border_radius=6)

    left = pygame.Rect(rect.left + _PAD, rect.top + 10, rect.width - WARES_WIDTH - 3 * _PAD, rect.height - 20)
    wares = pygame.Rect(left.right + _PAD, rect.top + 10, WARES_WIDTH, rect.height - 20)

    # header: name, role and what they are doing; the voice they speak with
    r = text.draw(surface, npc.name, (left.left, left.top), 30, ACCENT)
    about = f"{npc.role}" + (f"  -  {npc.activity}" if npc.activity else "")
    text.draw(surface, text.ellipsize(about, text.font(20), left.width - r.width - 12),
              (r.right + 12, left.top + 6), 20, INK_DIM)
    y = left.top + 30
    voice = f"voice: {voice_name(npc, skins)}" + (f"  ·  {speaker}" if speaker else "")
    text.draw(surface, text.ellipsize(voice, text.font(18), left.width), (left.left, y), 18,
              INK_FAINT)
    y += 22

    # input line at the bottom of the left column
    f = text.font(_SIZE)
    box = pygame.Rect(left.left, left.bottom - 28, left.width, 28)
    pygame.draw.rect(surface, SECTION_BG, box, border_radius=4)
    pygame.draw.rect(surface, BORDER, box, 1, border_radius=4)
    shown = input_text
    while shown and f.size("> " + shown + "|")[0] > box.width - 16:
        shown = shown[1:]  # keep the end of a long line in view, where the cursor is
    text.draw(surface, f"> {shown}|", (box.left + 8, box.top + 6), _SIZE, INK)
    if not input_text:
        hint_x = box.left + 8 + f.size("> |")[0] + 6
        text.draw(surface, "say something, Enter to send", (hint_x, box.top + 6), _SIZE, INK_FAINT)

    # transcript, newest at the bottom, as much as fits above the input line
    lines: list[tuple[str, tuple[int, int, int]]] = []
    for line, colour in transcript(npc, partial):
        lines += [(part, colour) for part in text.wrap(line, f, left.width)]
    step = f.get_linesize() + 1
    room = max(0, (box.top - 6 - y) // step)
    ty = box.top - 6 - step * min(room, len(lines))
    for line, colour in lines[-room:] if room else []:
        surface.blit(f.render(line, True, colour), (left.left, ty))
        ty += step

    _draw_wares(surface, wares, state, npc)


def _draw_wares(surface: pygame.Surface, rect: pygame.Rect, state: WorldState, npc: Npc) -> None:
    pygame.draw.line(surface, BORDER, (rect.left - _PAD // 2, rect.top), (rect.left - _PAD // 2, rect.bottom))
    y = rect.top
    f = text.font(18)
    in_stock = [(i, p) for i, p in sorted(npc.sells.items()) if npc.inventory.get(i, 0) > 0]
    y = _trade_list(surface, rect, y, "SELLS", [
        (i, state.items[i].name if i in state.items else i, p, npc.inventory.get(i, 0)) for i, p in in_stock
    ], "nothing in stock" if npc.sells else "nothing to sell")
    y += 4
    y = _trade_list(surface, rect, y, "BUYS", [
        (i, state.items[i].name if i in state.items else i, p, None) for i, p in sorted(npc.buys.items())
    ], "nothing")
    q = offered_quest(state, npc) or state.quest
    if q.giver == npc.id and not q.started:
        text.draw(surface, text.ellipsize(f"/accept  takes on '{q.title}'", f, rect.width),
                  (rect.left, y + 2), 18, ACCENT)
    text.draw(surface, COMMAND_HELP, (rect.left, rect.bottom - 36), 18, INK_FAINT)
    text.draw(surface, "Esc  leave the conversation", (rect.left, rect.bottom - 18), 18, INK_FAINT)


def _trade_list(surface: pygame.Surface, rect: pygame.Rect, y: int, title: str,
                rows: list[tuple[str, str, int, int | None]], empty: str) -> int:
    f = text.font(18)
    text.draw(surface, title, (rect.left, y), 18, INK_FAINT)
    y += 18
    if not rows:
        text.draw(surface, empty, (rect.left, y), 18, INK_DIM)
        return y + 18
    for item_id, name, price, count in rows[:4]:
        price_txt = f"{price}g" + (f"  x{count}" if count is not None else "")
        pw = f.size(price_txt)[0]
        label = text.ellipsize(f"{item_id}  {name}" if name.lower() != item_id else item_id, f,
                               rect.width - pw - 10)
        text.draw(surface, label, (rect.left, y), 18, INK)
        text.draw(surface, price_txt, (rect.right - pw, y), 18, ACCENT)
        y += 18
    if len(rows) > 4:
        text.draw(surface, f"and {len(rows) - 4} more", (rect.left, y), 18, INK_FAINT)
        y += 18
    return y
