"""Loading the world from data files, and the static geometry derived from the map."""

from __future__ import annotations

import functools
import tomllib
from collections import deque
from pathlib import Path

import msgspec

from engine import rng
from engine.state import (
    START_HOUR, Item, Npc, Player, Quest, QuestStep, ScheduleEntry, TileMap, WorldState,
)

#: Tile code -> (name, walkable). The renderer draws each kind; the rules only read walkability.
TILE_KINDS: dict[str, tuple[str, bool]] = {
    ".": ("grass", True),
    ":": ("road", True),
    "s": ("stone", True),
    "=": ("floor", True),
    "+": ("door", True),
    "*": ("flowers", True),
    "c": ("crops", True),
    "T": ("tree", False),
    "#": ("wall", False),
    "~": ("water", False),
    "o": ("well", False),
    "f": ("fence", False),
    "x": ("counter", False),
    "t": ("table", False),
}

QUEST_STEP_KINDS = ("obtain", "give", "receive", "talk", "tell", "persuade")
#: Step kinds done by what the player says to the step's villager.
SPOKEN_STEP_KINDS = ("tell", "persuade")


class WorldDataError(ValueError):
    """The world data files are inconsistent; the message names the offending entry."""


def default_world_path() -> Path:
    from assets import ASSETS_DIR  # data package: no code dependency

    return ASSETS_DIR / "village.toml"


class _NpcData(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    role: str
    persona: str
    x: int
    y: int
    gold: int
    schedule: list[ScheduleEntry]
    facts: list[str]
    inventory: dict[str, int] = {}
    sells: dict[str, int] = {}
    buys: dict[str, int] = {}
    skin: str | None = None


class _PlayerData(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    x: int
    y: int
    gold: int
    inventory: dict[str, int] = {}


class _QuestData(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    title: str
    giver: str
    summary: str
    steps: list[QuestStep]
    keywords: list[str] = []


class _WorldMeta(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    map: str


class _WorldData(msgspec.Struct, forbid_unknown_fields=True):
    world: _WorldMeta
    player: _PlayerData
    items: list[Item]
    npcs: list[_NpcData]
    quest: _QuestData
    places: dict[str, tuple[int, int]] = {}
    #: The quests after the first ([[quests]] tables).
    quests: list[_QuestData] = []


def parse_map(text: str) -> TileMap:
    rows = [r for r in text.splitlines() if r.strip()]
    if not rows:
        raise WorldDataError("map is empty")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise WorldDataError(f"map row {i} has {len(r)} tiles, expected {width}")
        for j, c in enumerate(r):
            if c not in TILE_KINDS:
                raise WorldDataError(f"map row {i} column {j}: unknown tile code {c!r}")
    return TileMap(width=width, height=len(rows), tiles="".join(rows))


def walkable(m: TileMap, x: int, y: int) -> bool:
    return 0 <= x < m.width and 0 <= y < m.height and TILE_KINDS[m.tiles[y * m.width + x]][1]


def free_tile_beside(state: WorldState, npc_id: str) -> tuple[int, int] | None:
    """A walkable tile next to an NPC that no NPC stands on (sides before corners), or None."""
    npc = state.npc(npc_id)
    for dx, dy in ((0, 1), (1, 0), (-1, 0), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)):
        x, y = npc.x + dx, npc.y + dy
        if walkable(state.map, x, y) and not any(n.x == x and n.y == y for n in state.npcs):
            return x, y
    return None


def load_world(path: Path | str | None = None, seed: int = 0) -> WorldState:
    """Build the initial state from a world TOML file (and the map file it names)."""
    path = Path(path) if path else default_world_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        data = msgspec.convert(raw, _WorldData)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise WorldDataError(f"{path}: {e}") from e
    except msgspec.ValidationError as e:
        raise WorldDataError(f"{path}: {e}") from e
    try:
        tiles = parse_map((path.parent / data.world.map).read_text(encoding="utf-8"))
    except OSError as e:
        raise WorldDataError(f"{path}: map file: {e}") from e
    tmap = TileMap(width=tiles.width, height=tiles.height, tiles=tiles.tiles, places=data.places)
    items = {it.id: it for it in data.items}

    def check_pos(what: str, x: int, y: int) -> None:
        if not walkable(tmap, x, y):
            raise WorldDataError(f"{what}: tile ({x}, {y}) is not walkable or outside the map")

    def check_items(what: str, d: dict[str, int], nonneg: bool = True) -> None:
        for k, v in d.items():
            if k not in items:
                raise WorldDataError(f"{what}: unknown item {k!r}")
            if v < 0 or (not nonneg and v <= 0):
                raise WorldDataError(f"{what}: {k} must be positive, got {v}")

    for name, (x, y) in data.places.items():
        if not (0 <= x < tmap.width and 0 <= y < tmap.height):
            raise WorldDataError(f"place {name!r}: ({x}, {y}) is outside the map")
    check_pos("player", data.player.x, data.player.y)
    check_items("player inventory", data.player.inventory)
    npcs: list[Npc] = []
    for nd in sorted(data.npcs, key=lambda n: n.id):
        check_pos(f"npc {nd.id}", nd.x, nd.y)
        check_items(f"npc {nd.id} inventory", nd.inventory)
        check_items(f"npc {nd.id} sells", nd.sells, nonneg=False)
        check_items(f"npc {nd.id} buys", nd.buys, nonneg=False)
        if not nd.schedule:
            raise WorldDataError(f"npc {nd.id}: schedule is empty")
        for e in nd.schedule:
            check_pos(f"npc {nd.id} schedule at hour {e.hour}", e.x, e.y)
        sched = sorted(nd.schedule, key=lambda e: e.hour)
        now = [e for e in sched if e.hour <= START_HOUR]
        activity = (now[-1] if now else sched[-1]).activity
        npcs.append(Npc(
            id=nd.id, name=nd.name, role=nd.role, persona=nd.persona, x=nd.x, y=nd.y, gold=nd.gold,
            inventory=dict(sorted(nd.inventory.items())), sells=dict(sorted(nd.sells.items())),
            buys=dict(sorted(nd.buys.items())), schedule=sched, facts=list(nd.facts), skin=nd.skin,
            from_x=nd.x, from_y=nd.y, activity=activity,
        ))
    if len({n.id for n in npcs}) != len(npcs):
        raise WorldDataError("npc ids must be unique")
    npc_ids = {n.id for n in npcs}
    quest_data = [data.quest, *data.quests]
    if len({q.id for q in quest_data}) != len(quest_data):
        raise WorldDataError("quest ids must be unique")
    for q in quest_data:
        _check_quest(q, npc_ids, items)
    quests = [_quest(q) for q in quest_data]
    p = data.player
    return WorldState(
        tick=0, seed=seed, rng=rng.seed_state(seed), map=tmap, items=items,
        player=Player(name=p.name, x=p.x, y=p.y, gold=p.gold, inventory=dict(p.inventory),
                      from_x=p.x, from_y=p.y),
        npcs=npcs,
        quest=quests[0], quests=quests[1:] or msgspec.UNSET,
        world_name=data.world.name,
    )


def _quest(q: _QuestData) -> Quest:
    return Quest(id=q.id, title=q.title, giver=q.giver, summary=q.summary, steps=list(q.steps),
                 keywords=list(q.keywords) if q.keywords else msgspec.UNSET)


def _check_quest(q: _QuestData, npc_ids: set[str], items: dict[str, Item]) -> None:
    if q.giver not in npc_ids:
        raise WorldDataError(f"quest {q.id}: unknown giver {q.giver!r}")
    for i, s in enumerate(q.steps):
        where = f"quest {q.id} step {i}"
        if s.kind not in QUEST_STEP_KINDS:
            raise WorldDataError(f"{where}: unknown kind {s.kind!r}")
        if s.kind in ("give", "receive", "talk", *SPOKEN_STEP_KINDS) and s.npc not in npc_ids:
            raise WorldDataError(f"{where}: unknown npc {s.npc!r}")
        if s.kind in SPOKEN_STEP_KINDS:
            if not s.words or any(not w.strip() or any(not a.strip() for a in w.split("|"))
                                  for w in s.words):
                raise WorldDataError(f"{where}: a {s.kind} step needs words the player's line "
                                     f"must hold (each non-empty, alternatives split by '|')")
            if not s.reply or '"' in s.reply or "\\" in s.reply:
                raise WorldDataError(f"{where}: a {s.kind} step needs a reply without double "
                                     f"quotes or backslashes")
        elif s.kind != "talk" and s.item not in items:
            raise WorldDataError(f"{where}: unknown item {s.item!r}")


def new_game(seed: int = 0, world: Path | str | None = None) -> WorldState:
    return load_world(world, seed=seed)


@functools.lru_cache(maxsize=256)
def distance_field(tiles: str, width: int, height: int, tx: int, ty: int) -> tuple[int, ...]:
    """Walking distance from every tile to (tx, ty); -1 where unreachable.

    Derived from the static map only, so it is cached across ticks and processes compute the same.
    """
    kinds = TILE_KINDS
    n = width * height
    dist = [-1] * n
    start = ty * width + tx
    dist[start] = 0
    q = deque([start])
    while q:
        i = q.popleft()
        x, y = i % width, i // width
        d = dist[i] + 1
        for nx, ny in ((x, y - 1), (x + 1, y), (x, y + 1), (x - 1, y)):
            if 0 <= nx < width and 0 <= ny < height:
                j = ny * width + nx
                if dist[j] < 0 and kinds[tiles[j]][1]:
                    dist[j] = d
                    q.append(j)
    return tuple(dist)
