"""Fonts and text layout for the window.

Only pygame's bundled default font is used (``Font(None, size)``), with a system font as a last
resort, so text renders the same on a machine with no fonts installed.
"""

from __future__ import annotations

import pygame

Colour = tuple[int, int, int]

_fonts: dict[int, pygame.font.Font] = {}


def font(size: int) -> pygame.font.Font:
    if not pygame.font.get_init():
        pygame.font.init()
    f = _fonts.get(size)
    if f is not None:
        try:
            f.get_height()
            return f
        except pygame.error:  # the font module was shut down and started again since
            _fonts.clear()
    try:
        f = pygame.font.Font(None, size)
    except (OSError, pygame.error):
        f = pygame.font.SysFont(None, size)
    _fonts[size] = f
    return f


def wrap(text: str, f: pygame.font.Font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word longer than a line is cut by characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if f.size(candidate)[0] <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while f.size(word)[0] > width and len(word) > 1:
                cut = len(word)
                while cut > 1 and f.size(word[:cut])[0] > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def ellipsize(text: str, f: pygame.font.Font, width: int) -> str:
    if f.size(text)[0] <= width:
        return text
    while text and f.size(text + "…")[0] > width:
        text = text[:-1]
    return text.rstrip() + "…"


def draw(surface: pygame.Surface, text: str, pos: tuple[int, int], size: int, colour: Colour,
         shadow: Colour | None = None) -> pygame.Rect:
    """Blit one line at ``pos`` (top-left); returns the area it covers."""
    f = font(size)
    img = f.render(text, True, colour)
    if shadow is not None:
        surface.blit(f.render(text, True, shadow), (pos[0] + 1, pos[1] + 1))
    return surface.blit(img, pos)


def draw_wrapped(surface: pygame.Surface, text: str, rect: pygame.Rect, size: int, colour: Colour,
                 line_gap: int = 2, max_lines: int | None = None) -> int:
    """Draw ``text`` wrapped inside ``rect`` from its top; returns the y just below the last line."""
    f = font(size)
    lines = wrap(text, f, rect.width)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = ellipsize(lines[-1] + "…", f, rect.width)
    y = rect.top
    for line in lines:
        surface.blit(f.render(line, True, colour), (rect.left, y))
        y += f.get_linesize() + line_gap
    return y
