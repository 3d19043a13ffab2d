"""Tile and character images for the window, loaded from ``assets/art/`` (made by tools/make_art.py).

Each image is scaled once, at load, to the size the map is drawn at. A missing or unreadable file
falls back to a plain drawn shape in the same colour family, so a checkout without the art (or with a
new tile kind the art does not cover yet) still plays.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import pygame

from assets import ASSETS_DIR
from engine.world import TILE_KINDS

ART_DIR = ASSETS_DIR / "art"
#: Source cell size of every PNG, and the order of the facings in a character strip.
SOURCE_PX = 32
FACINGS = ("down", "up", "left", "right")
#: Ground tiles that look the same mirrored: drawn flipped by position, so large areas do not
#: show a repeating stamp.
MIRRORABLE = frozenset({"grass", "road", "stone", "flowers", "water"})
#: Tiles drawn as a horizontal run; where a run goes north-south the tile is turned a quarter.
RUNS = frozenset({"fence"})

_FALLBACK_TILE_COLOURS = {
    "grass": (96, 152, 74), "road": (190, 156, 106), "stone": (168, 164, 152), "floor": (166, 116, 72),
    "door": (110, 72, 40), "flowers": (150, 170, 90), "crops": (200, 176, 90), "tree": (40, 100, 52),
    "wall": (150, 86, 64), "water": (60, 116, 180), "well": (120, 126, 140), "fence": (134, 92, 54),
    "counter": (100, 64, 36), "table": (140, 94, 54),
}
_FALLBACK_CHARACTER_COLOURS = {
    "bram": (112, 70, 38), "maren": (184, 42, 50), "tobin": (50, 122, 70), "hilda": (46, 82, 168),
    "player": (122, 82, 48),
}


@dataclass
class Art:
    tile_px: int
    char_px: int
    #: Tile code (as in the map) -> its variants (index 0 unflipped; mirrored ones follow).
    tiles: dict[str, list[pygame.Surface]]
    #: Tile code -> the tile turned to run north-south (only for kinds in ``RUNS``).
    upright: dict[str, pygame.Surface]
    #: Character id -> facing -> sprite.
    characters: dict[str, dict[str, pygame.Surface]]
    #: Names of the images that came from the fallback painter (reported, never fatal).
    fallbacks: list[str]

    def tile(self, code: str, x: int, y: int, upright: bool = False) -> pygame.Surface:
        if upright and code in self.upright:
            return self.upright[code]
        variants = self.tiles.get(code) or self.tiles["."]
        # A fixed spatial pattern (no randomness): neighbours rarely share a variant.
        return variants[(x * 7 + y * 13 + (x * y) % 3) % len(variants)]

    def character(self, char_id: str, facing: str) -> pygame.Surface:
        frames = self.characters.get(char_id)
        if frames is None:
            frames = self.characters[char_id] = _fallback_character(char_id, self.char_px)
        return frames.get(facing) or frames["down"]


def load_art(tile_px: int, char_px: int | None = None, char_ids: list[str] | tuple[str, ...] = ()) -> Art:
    """Load every tile kind scaled to ``tile_px``, and the given characters (plus the player)
    scaled to ``char_px`` (default: the tile size)."""
    char_px = char_px or tile_px
    fallbacks: list[str] = []
    tiles: dict[str, list[pygame.Surface]] = {}
    upright: dict[str, pygame.Surface] = {}
    for code, (name, _walkable) in TILE_KINDS.items():
        img = _load(f"tile_{name}.png", (SOURCE_PX, SOURCE_PX))
        if img is None:
            fallbacks.append(f"tile_{name}")
            img = _fallback_tile(name)
        base = _scale(img, tile_px, tile_px)
        tiles[code] = [base]
        if name in MIRRORABLE:
            tiles[code] += [pygame.transform.flip(base, fx, fy)
                            for fx, fy in ((True, False), (False, True), (True, True))]
        if name in RUNS:
            upright[code] = pygame.transform.rotate(base, -90)
    characters: dict[str, dict[str, pygame.Surface]] = {}
    for char_id in dict.fromkeys(["player", *char_ids]):
        strip = _load(f"char_{char_id}.png", (SOURCE_PX * len(FACINGS), SOURCE_PX))
        if strip is None:
            fallbacks.append(f"char_{char_id}")
            characters[char_id] = _fallback_character(char_id, char_px)
            continue
        characters[char_id] = {
            facing: _scale(strip.subsurface((i * SOURCE_PX, 0, SOURCE_PX, SOURCE_PX)), char_px, char_px)
            for i, facing in enumerate(FACINGS)
        }
    return Art(tile_px=tile_px, char_px=char_px, tiles=tiles, upright=upright, characters=characters, fallbacks=fallbacks)


def _load(filename: str, size: tuple[int, int]) -> pygame.Surface | None:
    path = ART_DIR / filename
    try:
        img = pygame.image.load(str(path))
    except (OSError, pygame.error, FileNotFoundError):
        return None
    if img.get_size() != size:
        return None  # a sheet of the wrong shape would draw garbage; the fallback is honest
    # convert_alpha needs a display; surfaces for an off-screen render work without it.
    return img.convert_alpha() if pygame.display.get_surface() is not None else img


def _scale(img: pygame.Surface, w: int, h: int) -> pygame.Surface:
    if img.get_size() == (w, h):
        return img.copy()
    return pygame.transform.smoothscale(img, (w, h))


def _fallback_tile(name: str) -> pygame.Surface:
    s = pygame.Surface((SOURCE_PX, SOURCE_PX), pygame.SRCALPHA)
    colour = _FALLBACK_TILE_COLOURS.get(name, _colour_for(name))
    s.fill(colour)
    dark = tuple(max(0, c - 30) for c in colour)
    pygame.draw.rect(s, dark, s.get_rect(), 1)
    return s


def _fallback_character(char_id: str, px: int) -> dict[str, pygame.Surface]:
    colour = _FALLBACK_CHARACTER_COLOURS.get(char_id, _colour_for(char_id))
    frames: dict[str, pygame.Surface] = {}
    for facing, (dx, dy) in zip(FACINGS, ((0, 1), (0, -1), (-1, 0), (1, 0))):
        s = pygame.Surface((px, px), pygame.SRCALPHA)
        c = px // 2
        pygame.draw.circle(s, (20, 16, 18), (c, c + px // 8), px // 3 + 1)
        pygame.draw.circle(s, colour, (c, c + px // 8), px // 3)
        pygame.draw.circle(s, (232, 190, 150), (c, px // 4 + 1), px // 5)
        # a dot toward the facing, so direction still reads
        pygame.draw.circle(s, (20, 16, 18), (c + dx * px // 4, c + px // 8 + dy * px // 4), max(1, px // 12))
        frames[facing] = s
    return frames


def _colour_for(name: str) -> tuple[int, int, int]:
    # Stable across processes (``hash`` is salted), and never too dark to see.
    d = blake3.blake3(name.encode()).digest()
    return (80 + d[0] % 160, 80 + d[1] % 160, 80 + d[2] % 160)
