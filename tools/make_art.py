"""Draw Hearth's tiles and character sprites with pygame and write them to ``assets/art/``.

Output (all 32x32 pixel cells, RGBA PNG):

- ``tile_<kind>.png``  one tile per kind in ``engine.world.TILE_KINDS`` (grass, road, stone, ...);
- ``char_<id>.png``    one 128x32 strip per character (the NPC ids and ``player``), four facings in
                       the order of ``FACINGS``: down, up, left, right.

Every pixel comes from pygame's drawing calls and a fixed-seed local generator per image, so running
the script again writes the same files. Run it with ``SDL_VIDEODRIVER=dummy`` where there is no display.
"""

from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pygame  # noqa: E402

from assets import ASSETS_DIR  # noqa: E402
from engine.world import TILE_KINDS  # noqa: E402

CELL = 32
FACINGS = ("down", "up", "left", "right")
ART_DIR = ASSETS_DIR / "art"

Colour = tuple[int, int, int]

# ---- palette -----------------------------------------------------------------------------------

GRASS, GRASS_DARK, GRASS_LIGHT = (96, 152, 74), (74, 126, 60), (128, 178, 92)
ROAD, ROAD_DARK, ROAD_LIGHT = (190, 156, 106), (162, 128, 86), (212, 182, 134)
COBBLE, COBBLE_DARK, COBBLE_LIGHT = (168, 164, 152), (118, 114, 108), (196, 192, 180)
PLANK, PLANK_DARK, PLANK_LIGHT = (166, 116, 72), (122, 82, 50), (190, 140, 92)
BRICK, BRICK_DARK, MORTAR = (158, 90, 66), (126, 66, 50), (92, 68, 58)
WOOD_DARK, WOOD, WOOD_LIGHT = (84, 56, 36), (134, 92, 54), (170, 122, 76)
WATER, WATER_DARK, WATER_LIGHT = (60, 116, 180), (46, 94, 158), (138, 190, 232)
LEAF_DARK, LEAF, LEAF_LIGHT = (34, 86, 48), (50, 116, 60), (92, 156, 80)
SOIL, SOIL_DARK = (126, 88, 56), (98, 66, 42)
STEEL, STEEL_DARK, STEEL_LIGHT = (170, 176, 188), (110, 116, 128), (222, 226, 234)
OUTLINE = (28, 22, 24)


def _rng(name: str) -> random.Random:
    # A string seed is hashed with SHA-512 by ``random``: stable across processes and versions.
    return random.Random(f"hearth-art:{name}")


def _cell() -> pygame.Surface:
    return pygame.Surface((CELL, CELL), pygame.SRCALPHA)


# ---- tiles -------------------------------------------------------------------------------------

def _speckle(s: pygame.Surface, rng: random.Random, colours: list[Colour], n: int,
             size: tuple[int, int] = (1, 1), margin: int = 0) -> None:
    for _ in range(n):
        x = rng.randrange(margin, CELL - margin - size[0] + 1)
        y = rng.randrange(margin, CELL - margin - size[1] + 1)
        s.fill(rng.choice(colours), (x, y, *size))


def draw_grass(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(GRASS)
    _speckle(s, rng, [GRASS_DARK], 26, (1, 2))
    _speckle(s, rng, [GRASS_LIGHT], 14, (1, 2))
    for _ in range(3):  # a few taller tufts, so the field reads as grass rather than noise
        x, y = rng.randrange(3, 28), rng.randrange(4, 29)
        pygame.draw.line(s, GRASS_DARK, (x, y), (x - 1, y - 3))
        pygame.draw.line(s, GRASS_DARK, (x + 2, y), (x + 3, y - 3))
        pygame.draw.line(s, GRASS_LIGHT, (x + 1, y), (x + 1, y - 4))


def draw_road(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(ROAD)
    _speckle(s, rng, [ROAD_DARK], 30)
    _speckle(s, rng, [ROAD_LIGHT], 20)
    for _ in range(4):  # pebbles with a lit top edge
        x, y = rng.randrange(2, 28), rng.randrange(2, 28)
        pygame.draw.ellipse(s, ROAD_DARK, (x, y, 4, 3))
        s.fill(ROAD_LIGHT, (x + 1, y, 2, 1))


def draw_stone(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(COBBLE_DARK)
    # Two rows of cobbles per half tile, offset like laid stone; shades vary per cobble.
    for row in range(4):
        y = row * 8
        offset = 0 if row % 2 == 0 else -5
        for col in range(4):
            x = offset + col * 10
            shade = rng.choice([COBBLE, COBBLE, COBBLE_LIGHT, (158, 154, 142)])
            pygame.draw.rect(s, shade, (x + 1, y + 1, 9, 6), border_radius=2)
            s.fill(COBBLE_LIGHT, (x + 2, y + 1, 6, 1))
    _speckle(s, rng, [COBBLE_DARK], 10)


def draw_floor(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(PLANK)
    for i in range(4):  # four boards, each with a seam, grain and a staggered butt joint
        y = i * 8
        s.fill(PLANK_LIGHT, (0, y, CELL, 1))
        s.fill(PLANK_DARK, (0, y + 7, CELL, 1))
        for _ in range(3):
            gx, gy = rng.randrange(0, 26), y + rng.randrange(2, 6)
            s.fill((150, 104, 64), (gx, gy, rng.randrange(4, 9), 1))
        jx = 6 + (i * 11) % 24
        s.fill(PLANK_DARK, (jx, y + 1, 1, 6))
        s.fill(WOOD_DARK, (jx + 2, y + 3, 1, 1))


def draw_door(s: pygame.Surface, rng: random.Random) -> None:
    draw_floor(s, rng)
    pygame.draw.rect(s, WOOD_DARK, (3, 0, 26, 32))
    for i, x in enumerate(range(5, 27, 6)):
        pygame.draw.rect(s, (WOOD if i % 2 else (146, 100, 60)), (x, 2, 5, 30))
        s.fill(WOOD_LIGHT, (x, 2, 1, 30))
    for y in (7, 23):  # iron straps
        s.fill((60, 58, 62), (5, y, 22, 2))
        s.fill((110, 108, 112), (5, y, 22, 1))
    pygame.draw.circle(s, (214, 182, 84), (23, 16), 2)
    s.fill(OUTLINE, (3, 0, 26, 1))


def draw_flowers(s: pygame.Surface, rng: random.Random) -> None:
    draw_grass(s, rng)
    petals = [(220, 70, 76), (244, 210, 84), (244, 242, 232), (168, 110, 206)]
    spots = [(6, 7), (18, 5), (26, 12), (10, 17), (21, 21), (5, 26), (15, 27), (27, 27)]
    for x, y in spots:
        x += rng.randrange(-2, 3)
        y += rng.randrange(-2, 3)
        c = rng.choice(petals)
        s.fill(LEAF, (x, y + 2, 1, 3))
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            s.fill(c, (x + dx, y + dy, 1, 1))
        s.fill((250, 220, 110) if c != petals[1] else (200, 120, 40), (x, y, 1, 1))


def draw_crops(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(SOIL)
    for x in range(2, CELL, 8):  # furrows run north-south, a row of barley on each ridge
        s.fill(SOIL_DARK, (x + 4, 0, 2, CELL))
        for y in range(1, CELL, 5):
            h = rng.randrange(3, 5)
            pygame.draw.line(s, (104, 140, 60), (x + 1, y + h), (x + 1, y))
            s.fill((222, 190, 90), (x, y, 3, 2))
            s.fill((244, 214, 120), (x + 1, y, 1, 1))


def draw_tree(s: pygame.Surface, rng: random.Random) -> None:
    draw_grass(s, rng)
    pygame.draw.ellipse(s, (54, 96, 48), (5, 22, 24, 9))  # shadow on the grass
    pygame.draw.rect(s, WOOD_DARK, (14, 20, 5, 9))
    s.fill(WOOD, (15, 20, 2, 9))
    pygame.draw.circle(s, OUTLINE, (16, 13), 14)
    pygame.draw.circle(s, LEAF_DARK, (16, 13), 13)
    pygame.draw.circle(s, LEAF, (14, 11), 10)
    pygame.draw.circle(s, LEAF_LIGHT, (11, 8), 5)
    for _ in range(10):  # leaf clusters break up the disc
        x, y = rng.randrange(6, 25), rng.randrange(4, 22)
        pygame.draw.circle(s, rng.choice([LEAF_DARK, LEAF, LEAF_LIGHT]), (x, y), 2)


def draw_wall(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(MORTAR)
    for row in range(4):
        y = row * 8
        offset = 0 if row % 2 == 0 else -8
        for col in range(3):
            x = offset + col * 16
            shade = rng.choice([BRICK, BRICK, BRICK_DARK, (170, 100, 72)])
            s.fill(shade, (x + 1, y + 1, 15, 6))
            s.fill((186, 118, 88), (x + 1, y + 1, 15, 1))
            s.fill(BRICK_DARK, (x + 1, y + 6, 15, 1))
    _speckle(s, rng, [MORTAR], 6)


def draw_water(s: pygame.Surface, rng: random.Random) -> None:
    s.fill(WATER)
    _speckle(s, rng, [WATER_DARK], 24, (2, 1))
    for y in (6, 16, 26):  # ripples: short lit arcs offset per row
        x = rng.randrange(2, 14)
        pygame.draw.arc(s, WATER_LIGHT, (x, y, 10, 5), 0.3, 2.8)
        pygame.draw.arc(s, WATER_LIGHT, (x + 13, y + 3, 8, 4), 0.3, 2.8)


def draw_well(s: pygame.Surface, rng: random.Random) -> None:
    draw_stone(s, rng)
    pygame.draw.circle(s, OUTLINE, (16, 17), 14)
    pygame.draw.circle(s, (132, 128, 122), (16, 17), 13)
    for i in range(12):  # ring stones
        pygame.draw.circle(s, COBBLE_LIGHT if i % 2 else COBBLE, _on_circle(16, 17, 10, i * 30), 3)
    pygame.draw.circle(s, (22, 40, 70), (16, 17), 7)
    pygame.draw.circle(s, WATER_DARK, (16, 18), 5)
    s.fill(WATER_LIGHT, (14, 17, 3, 1))
    for x in (3, 27):  # winch posts and beam
        s.fill(WOOD_DARK, (x, 4, 3, 14))
    s.fill(WOOD, (3, 5, 27, 3))
    s.fill(WOOD_LIGHT, (3, 5, 27, 1))
    pygame.draw.line(s, (200, 190, 160), (16, 8), (16, 14))
    s.fill(WOOD_DARK, (14, 13, 5, 4))


def _on_circle(cx: int, cy: int, r: int, degrees: int) -> tuple[int, int]:
    a = math.radians(degrees)
    return round(cx + r * math.cos(a)), round(cy + r * math.sin(a))


def draw_fence(s: pygame.Surface, rng: random.Random) -> None:
    draw_grass(s, rng)
    for y in (11, 20):  # two rails, then posts over them
        s.fill(WOOD_DARK, (0, y, CELL, 4))
        s.fill(WOOD_LIGHT, (0, y, CELL, 1))
    for x in (3, 24):
        s.fill(OUTLINE, (x - 1, 5, 7, 23))
        s.fill(WOOD, (x, 6, 5, 21))
        s.fill(WOOD_LIGHT, (x, 6, 5, 2))
        s.fill(WOOD_DARK, (x + 4, 8, 1, 19))


def draw_counter(s: pygame.Surface, rng: random.Random) -> None:
    draw_floor(s, rng)
    s.fill(OUTLINE, (0, 3, CELL, 27))
    s.fill((110, 70, 40), (0, 4, CELL, 14))  # top
    s.fill((150, 104, 62), (0, 4, CELL, 2))
    for x in range(0, CELL, 8):
        s.fill((96, 60, 34), (x, 6, 1, 12))
    s.fill(WOOD_DARK, (0, 18, CELL, 11))  # front panel, in shade
    for x in range(3, CELL, 8):
        s.fill((70, 46, 28), (x, 20, 4, 7))
    pygame.draw.ellipse(s, (226, 214, 190), (18, 7, 8, 6))  # a mug on the bar
    s.fill((196, 150, 70), (20, 8, 4, 3))


def draw_table(s: pygame.Surface, rng: random.Random) -> None:
    draw_floor(s, rng)
    pygame.draw.ellipse(s, (96, 64, 40), (4, 22, 26, 8))  # shadow
    pygame.draw.rect(s, OUTLINE, (3, 5, 26, 20), border_radius=4)
    pygame.draw.rect(s, (150, 100, 58), (4, 6, 24, 18), border_radius=3)
    s.fill((178, 128, 78), (6, 7, 20, 2))
    s.fill((126, 82, 48), (4, 14, 24, 1))
    pygame.draw.circle(s, (232, 226, 210), (11, 12), 3)  # plate
    s.fill((170, 110, 60), (10, 11, 3, 2))
    pygame.draw.rect(s, (210, 200, 180), (19, 9, 4, 5))  # mug
    s.fill((196, 150, 70), (20, 10, 2, 2))


TILE_PAINTERS = {
    "grass": draw_grass, "road": draw_road, "stone": draw_stone, "floor": draw_floor,
    "door": draw_door, "flowers": draw_flowers, "crops": draw_crops, "tree": draw_tree,
    "wall": draw_wall, "water": draw_water, "well": draw_well, "fence": draw_fence,
    "counter": draw_counter, "table": draw_table,
}


def make_tile(kind: str) -> pygame.Surface:
    s = _cell()
    TILE_PAINTERS[kind](s, _rng(f"tile:{kind}"))
    return s


# ---- characters --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Look:
    """What sets one character apart; the body is shared so that costume and silhouette do the work."""

    skin: Colour
    hair: Colour
    torso: Colour
    sleeves: Colour
    legs: Colour
    boots: Colour = (56, 40, 30)
    broad: bool = False          # wider torso and arms (the smith)
    skirt: bool = False          # a dress flaring to the feet (the innkeeper)
    coat: bool = False           # a long coat over the knees (the merchant)
    apron: Colour | None = None  # front panel over the torso
    beard: Colour | None = None
    hat: Colour | None = None    # wide-brimmed hat
    helmet: bool = False
    tabard: Colour | None = None
    spear: bool = False
    hood: Colour | None = None   # cloak with a hood
    bun: bool = False
    bedroll: Colour | None = None  # a rolled blanket across the back (the traveller)


LOOKS: dict[str, Look] = {
    "bram": Look(skin=(214, 160, 120), hair=(44, 32, 26), torso=(130, 118, 104), sleeves=(214, 160, 120),
                 legs=(70, 60, 54), broad=True, apron=(112, 70, 38), beard=(44, 32, 26)),
    "maren": Look(skin=(236, 188, 150), hair=(150, 70, 36), torso=(184, 42, 50), sleeves=(184, 42, 50),
                  legs=(184, 42, 50), skirt=True, apron=(240, 236, 226), bun=True),
    "tobin": Look(skin=(226, 178, 136), hair=(120, 84, 46), torso=(50, 122, 70), sleeves=(42, 104, 60),
                  legs=(96, 74, 50), coat=True, hat=(92, 60, 36)),
    "hilda": Look(skin=(230, 184, 148), hair=(212, 176, 96), torso=(126, 130, 138), sleeves=(126, 130, 138),
                  legs=(64, 66, 78), helmet=True, tabard=(46, 82, 168), spear=True),
    "player": Look(skin=(232, 186, 146), hair=(96, 62, 36), torso=(200, 180, 140), sleeves=(112, 70, 38),
                   legs=(84, 70, 56), hood=(112, 70, 38), bedroll=(186, 170, 128)),
}


def _shade(c: Colour, k: float) -> Colour:
    return tuple(max(0, min(255, round(v * k))) for v in c)  # type: ignore[return-value]


def _front(s: pygame.Surface, look: Look, back: bool) -> None:
    """Facing down (``back`` False) or up (True): symmetric body, face or back of head."""
    w = 16 if look.broad else 12
    x0 = 16 - w // 2
    # legs and feet
    if look.skirt:
        pygame.draw.polygon(s, look.torso, [(x0 + 1, 17), (x0 + w - 1, 17), (x0 + w + 3, 28), (x0 - 3, 28)])
        s.fill(_shade(look.torso, 0.75), (x0 - 3, 27, w + 6, 1))
        s.fill(look.boots, (12, 28, 3, 2))
        s.fill(look.boots, (17, 28, 3, 2))
    else:
        s.fill(look.legs, (12, 24, 3, 5))
        s.fill(look.legs, (17, 24, 3, 5))
        s.fill(look.boots, (11, 28, 4, 2))
        s.fill(look.boots, (17, 28, 4, 2))
    # cloak behind the body
    if look.hood and back:
        pygame.draw.polygon(s, look.hood, [(10, 14), (22, 14), (25, 28), (7, 28)])
        for x0_, x1_ in ((13, 11), (19, 21)):  # folds in the cloak
            pygame.draw.line(s, _shade(look.hood, 0.78), (x0_, 20), (x1_, 27))
    # torso
    bottom = 26 if look.coat else 24
    if look.coat:
        pygame.draw.polygon(s, look.torso, [(x0, 15), (x0 + w, 15), (x0 + w + 2, 27), (x0 - 2, 27)])
    else:
        pygame.draw.rect(s, look.torso, (x0, 15, w, bottom - 15), border_radius=2)
    s.fill(_shade(look.torso, 1.15), (x0 + 1, 15, w - 2, 1))
    # arms, with hands
    aw = 4 if look.broad else 3
    for ax in (x0 - aw, x0 + w):
        s.fill(look.sleeves, (ax, 16, aw, 8))
        s.fill(look.skin, (ax, 23, aw, 2))
    if look.hood and not back:
        # cloak drapes over the shoulders and down the sides, open at the front
        pygame.draw.polygon(s, look.hood, [(7, 16), (12, 14), (12, 27), (7, 27)])
        pygame.draw.polygon(s, look.hood, [(25, 16), (20, 14), (20, 27), (25, 27)])
        s.fill((214, 184, 80), (15, 15, 2, 2))  # clasp
    if not back:
        if look.apron:
            pygame.draw.rect(s, look.apron, (x0 + 2, 17, w - 4, (27 if look.skirt else bottom) - 17),
                             border_radius=1)
            s.fill(_shade(look.apron, 0.8), (x0 + 2, 19, w - 4, 1))
        if look.tabard:
            s.fill(look.tabard, (x0 + 2, 15, w - 4, 12))
            s.fill((230, 200, 90), (15, 19, 2, 3))  # the watch's badge
        if look.coat:
            s.fill(_shade(look.torso, 0.7), (15, 16, 2, 11))
            s.fill((214, 184, 80), (15, 18, 2, 1))
            s.fill((214, 184, 80), (15, 21, 2, 1))
    else:
        if look.apron:  # apron strings tied at the back
            s.fill(look.apron, (x0, 19, w, 1))
            s.fill(look.apron, (15, 19, 3, 3))
        if look.tabard:
            s.fill(look.tabard, (x0 + 2, 15, w - 4, 12))
    # belt
    if not look.skirt and not look.coat and not look.apron:
        s.fill((70, 48, 30), (x0, 21, w, 2))
    _head_front(s, look, back)
    if look.bedroll:
        if back:
            pygame.draw.rect(s, look.bedroll, (7, 15, 18, 6), border_radius=3)
            s.fill(_shade(look.bedroll, 0.75), (7, 19, 18, 1))
            for x in (11, 20):
                s.fill(WOOD_DARK, (x, 15, 1, 6))
        else:
            pygame.draw.line(s, WOOD_DARK, (12, 15), (19, 25), 2)  # the roll's strap
    if look.spear:
        _spear(s, 26)


def _head_front(s: pygame.Surface, look: Look, back: bool) -> None:
    pygame.draw.ellipse(s, look.skin, (10, 3, 12, 13))
    if look.helmet:
        pygame.draw.ellipse(s, STEEL, (9, 1, 14, 10))
        s.fill(STEEL, (9, 6, 14, 3))
        s.fill(STEEL_DARK, (9, 8, 14, 1))
        s.fill(STEEL_LIGHT, (12, 2, 4, 2))
        if back:
            s.fill(STEEL, (10, 8, 12, 6))
            s.fill(look.hair, (13, 13, 6, 3))  # braid under the helmet
        else:
            s.fill(STEEL_DARK, (15, 8, 2, 4))  # nasal guard
    elif look.hood:
        pygame.draw.ellipse(s, look.hood, (8, 1, 16, 15))
        if back:
            s.fill(_shade(look.hood, 0.8), (15, 3, 2, 12))
        else:
            pygame.draw.ellipse(s, look.skin, (11, 5, 10, 10))
            s.fill(look.hair, (12, 5, 8, 2))
    else:
        if back:
            pygame.draw.ellipse(s, look.hair, (10, 2, 12, 13))
        else:
            pygame.draw.ellipse(s, look.hair, (10, 2, 12, 7))
            s.fill(look.hair, (10, 5, 2, 5))
            s.fill(look.hair, (20, 5, 2, 5))
        if look.bun:
            pygame.draw.circle(s, look.hair, (16, 2), 3)
            s.fill(_shade(look.hair, 1.3), (15, 1, 2, 1))
        if look.hat:
            pygame.draw.ellipse(s, look.hat, (5, 4, 22, 6))
            pygame.draw.rect(s, look.hat, (10, 0, 12, 6), border_radius=2)
            s.fill((196, 160, 70), (10, 4, 12, 2))  # hat band
            s.fill((212, 60, 60), (19, 0, 2, 4))    # feather
    if not back:
        s.fill(OUTLINE, (13, 10, 2, 2))
        s.fill(OUTLINE, (18, 10, 2, 2))
        if look.beard:
            pygame.draw.ellipse(s, look.beard, (10, 10, 12, 8))
            s.fill(look.skin, (13, 12, 6, 1))
            s.fill((150, 80, 70), (14, 13, 4, 1))
        else:
            s.fill(_shade(look.skin, 0.8), (15, 13, 2, 1))


def _side(s: pygame.Surface, look: Look) -> None:
    """Facing left; the right facing is its mirror image."""
    w = 12 if look.broad else 10
    x0 = 16 - w // 2
    if look.skirt:
        pygame.draw.polygon(s, look.torso, [(x0 + 1, 17), (x0 + w - 1, 17), (x0 + w + 2, 28), (x0 - 2, 28)])
        s.fill(_shade(look.torso, 0.75), (x0 - 2, 27, w + 4, 1))
        s.fill(look.boots, (12, 28, 4, 2))
    else:
        s.fill(look.legs, (13, 24, 3, 5))  # legs mid-stride
        s.fill(_shade(look.legs, 0.8), (17, 24, 3, 5))
        s.fill(look.boots, (11, 28, 5, 2))
        s.fill(_shade(look.boots, 0.8), (17, 28, 4, 2))
    if look.hood:
        pygame.draw.polygon(s, look.hood, [(17, 14), (23, 15), (25, 28), (16, 28)])
    if look.bedroll:
        pygame.draw.rect(s, look.bedroll, (19, 14, 7, 7), border_radius=3)
        s.fill(_shade(look.bedroll, 0.75), (19, 19, 7, 1))
    if look.coat:
        pygame.draw.polygon(s, look.torso, [(x0, 15), (x0 + w, 15), (x0 + w + 1, 27), (x0 - 1, 27)])
    else:
        pygame.draw.rect(s, look.torso, (x0, 15, w, 9), border_radius=2)
    if look.apron:
        s.fill(look.apron, (x0, 17, 3, (27 if look.skirt else 24) - 17))
        s.fill(look.apron, (x0 + 3, 19, w - 3, 1))  # apron string round the back
    if look.tabard:
        s.fill(look.tabard, (x0 + 1, 15, w - 2, 12))
    if not look.skirt and not look.coat and not look.apron:
        s.fill((70, 48, 30), (x0, 21, w, 2))
    aw = 4 if look.broad else 3
    s.fill(_shade(look.sleeves, 0.85), (15, 16, aw, 8))  # near arm, swung
    s.fill(look.skin, (15, 23, aw, 2))
    # head, looking left
    pygame.draw.ellipse(s, look.skin, (9, 3, 12, 13))
    if look.helmet:
        pygame.draw.ellipse(s, STEEL, (9, 1, 14, 10))
        s.fill(STEEL, (14, 6, 9, 8))
        s.fill(STEEL_DARK, (9, 8, 14, 1))
        s.fill(STEEL_LIGHT, (12, 2, 4, 2))
        s.fill(look.hair, (19, 13, 3, 3))
    elif look.hood:
        pygame.draw.ellipse(s, look.hood, (9, 1, 16, 15))
        pygame.draw.ellipse(s, look.skin, (9, 5, 8, 10))
    else:
        pygame.draw.ellipse(s, look.hair, (11, 2, 12, 8))
        s.fill(look.hair, (16, 5, 6, 8))
        if look.bun:
            pygame.draw.circle(s, look.hair, (21, 4), 3)
        if look.hat:
            pygame.draw.ellipse(s, look.hat, (6, 4, 22, 6))
            pygame.draw.rect(s, look.hat, (11, 0, 11, 6), border_radius=2)
            s.fill((196, 160, 70), (11, 4, 11, 2))
            s.fill((212, 60, 60), (20, 0, 2, 4))
    s.fill(OUTLINE, (11, 10, 2, 2))
    s.fill(_shade(look.skin, 0.85), (8, 11, 2, 2))  # nose
    if look.beard:
        pygame.draw.ellipse(s, look.beard, (9, 11, 10, 7))
        s.fill(look.beard, (14, 9, 3, 4))
    if look.spear:
        _spear(s, 7)


def _spear(s: pygame.Surface, x: int) -> None:
    s.fill(WOOD_DARK, (x, 4, 2, 27))
    s.fill(WOOD_LIGHT, (x, 4, 1, 27))
    pygame.draw.polygon(s, STEEL_LIGHT, [(x + 1, -1), (x + 3, 5), (x - 1, 5)])
    s.fill(STEEL_DARK, (x - 1, 5, 4, 1))


def _outlined(figure: pygame.Surface) -> pygame.Surface:
    """The figure over a one-pixel dark outline and a soft ground shadow: readable on any tile."""
    out = _cell()
    pygame.draw.ellipse(out, (0, 0, 0, 70), (7, 26, 18, 6))
    edge = pygame.mask.from_surface(figure).to_surface(setcolor=(*OUTLINE, 255), unsetcolor=(0, 0, 0, 0))
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        out.blit(edge, (dx, dy))
    out.blit(figure, (0, 0))
    return out


def make_character(look: Look) -> pygame.Surface:
    """A 128x32 strip: down, up, left, right."""
    strip = pygame.Surface((CELL * len(FACINGS), CELL), pygame.SRCALPHA)
    down, up, left = _cell(), _cell(), _cell()
    _front(down, look, back=False)
    _front(up, look, back=True)
    _side(left, look)
    frames = {"down": down, "up": up, "left": left, "right": pygame.transform.flip(left, True, False)}
    for i, facing in enumerate(FACINGS):
        strip.blit(_outlined(frames[facing]), (i * CELL, 0))
    return strip


# ---- output ------------------------------------------------------------------------------------

def write_all(out_dir: Path = ART_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, _walkable in TILE_KINDS.values():
        path = out_dir / f"tile_{name}.png"
        pygame.image.save(make_tile(name), str(path))
        written.append(path)
    for char_id, look in LOOKS.items():
        path = out_dir / f"char_{char_id}.png"
        pygame.image.save(make_character(look), str(path))
        written.append(path)
    return written


def main() -> int:
    missing = [name for name, _ in TILE_KINDS.values() if name not in TILE_PAINTERS]
    if missing:
        print(f"make_art: no painter for tile kinds: {', '.join(missing)}", file=sys.stderr)
        return 1
    for path in write_all():
        print(path.relative_to(ASSETS_DIR.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
