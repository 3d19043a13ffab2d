"""The help overlay (F1): the keys, the conversation shortcuts, and where the game is saved."""

from __future__ import annotations

import pygame

from game import text
from game.palette import ACCENT, BORDER, DIALOGUE_BG, INK, INK_DIM, INK_FAINT

HELP_KEY = pygame.K_F1
HELP_KEY_NAME = "F1"

#: (keys, what they do), in the order a new player needs them.
KEYS = [
    ("Arrows / WASD", "walk"),
    ("E / Space", "talk to the villager in reach (the side panel names who)"),
    ("Enter", "say what you typed"),
    ("Esc", "leave the conversation"),
    ("/buy ID  /sell ID", "trade the item with that id (ids are in the villager's wares list)"),
    ("/give ID  /accept", "hand an item over; take on the villager's quest"),
    ("F1", "this help"),
    ("F2", "settings, sharing with other players, new game"),
]
SAVING = ("Your game is saved every game hour and when you close the window; `hearth play` "
          "continues it. New game (F2) keeps the old one as a backup.")


def draw_help(surface: pygame.Surface, area: pygame.Rect) -> None:
    rect = area.inflate(-80, -80)
    shade = pygame.Surface(rect.size, pygame.SRCALPHA)
    shade.fill(DIALOGUE_BG)
    surface.blit(shade, rect.topleft)
    pygame.draw.rect(surface, BORDER, rect, 2, border_radius=8)
    inner = rect.inflate(-40, -32)
    y = inner.top
    text.draw(surface, "How to play", (inner.left, y), 32, ACCENT)
    y += 44
    key_width = max(text.font(22).size(k)[0] for k, _ in KEYS) + 24
    for keys, what in KEYS:
        text.draw(surface, keys, (inner.left, y), 22, ACCENT)
        y = text.draw_wrapped(surface, what, pygame.Rect(inner.left + key_width, y,
                                                         inner.width - key_width, 60), 22, INK) + 4
    y += 10
    text.draw_wrapped(surface, SAVING, pygame.Rect(inner.left, y, inner.width, 80), 20, INK_DIM)
    text.draw(surface, "F1 or Esc  close", (inner.left, inner.bottom - 20), 18, INK_FAINT)
