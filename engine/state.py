"""World state: every piece of it is a msgspec Struct, so it has one canonical encoding.

The state holds the static world too (map, item catalogue, quest script): a save or an input log
is self-contained, and the state hash covers everything a rule can read.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, Struct, UnsetType

from engine.commands import NpcAction

TICKS_PER_SECOND = 60
#: One game hour lasts 20 real seconds; a day is 8 minutes of play.
TICKS_PER_HOUR = 20 * TICKS_PER_SECOND
HOURS_PER_DAY = 24
#: The first tick of a new game is 08:00 on day 1.
START_HOUR = 8
#: Ticks for one tile of movement.
PLAYER_MOVE_TICKS = 9
NPC_MOVE_TICKS = 16
#: Dialogue memory kept per NPC (turns, oldest dropped first) and the longest line stored.
MEMORY_TURNS = 8
MAX_SAY_CHARS = 500
MAX_NPC_LINE_CHARS = 240


class Item(Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    name: str
    price: int
    description: str = ""
    quest: bool = False


class TileMap(Struct, frozen=True):
    width: int
    height: int
    #: Row-major tile codes, one character per tile (see ``engine.world.TILE_KINDS``).
    tiles: str
    #: Named places: name -> (x, y) of a representative tile.
    places: dict[str, tuple[int, int]] = {}

    def at(self, x: int, y: int) -> str:
        return self.tiles[y * self.width + x]


class ScheduleEntry(Struct, frozen=True):
    hour: int
    x: int
    y: int
    activity: str


class Turn(Struct, frozen=True):
    tick: int
    speaker: str  # "player" or the NPC's id
    text: str
    #: What the NPC did with this line (a committed NpcAction), if anything.
    action: NpcAction | None = None


class Npc(Struct):
    id: str
    name: str
    role: str
    persona: str
    x: int
    y: int
    gold: int
    inventory: dict[str, int]
    #: Items this NPC sells (item id -> price) and buys from the player (item id -> price).
    sells: dict[str, int]
    buys: dict[str, int]
    schedule: list[ScheduleEntry]
    facts: list[str]
    skin: str | None = None
    from_x: int = 0
    from_y: int = 0
    move_left: int = 0
    facing: str = "down"
    activity: str = ""
    memory: list[Turn] = []


class Player(Struct):
    name: str
    x: int
    y: int
    gold: int
    inventory: dict[str, int]
    from_x: int = 0
    from_y: int = 0
    move_left: int = 0
    facing: str = "down"
    talking_to: str | None = None


class QuestStep(Struct, frozen=True):
    #: "obtain" (player holds item), "give" (player gives item to npc),
    #: "receive" (npc gives item to player), "talk" (player talks to npc),
    #: "tell" (player tells npc a message: their line holds ``words``),
    #: "persuade" (player wins npc over by stating a fact: their line holds ``words``).
    kind: str
    description: str
    npc: str | None = None
    item: str | None = None
    reward_gold: int = 0
    #: tell / persuade: what the player's line must hold, decided by the engine. Each entry is one
    #: required word or phrase, with alternatives separated by "|" ("lantern|lamp").
    #: (Fields that are unset are left out of the encoding, so quests written before they existed
    #: encode and hash as they did.)
    words: list[str] | UnsetType = UNSET
    #: tell / persuade: what the villager answers when the line does it (the engine's fact).
    reply: str | UnsetType = UNSET


class Quest(Struct):
    id: str
    title: str
    giver: str
    summary: str
    steps: list[QuestStep]
    #: -1: not started; len(steps): complete.
    step: int = -1
    #: Words that name this quest when the player asks about it ("lantern", "watch").
    keywords: list[str] | UnsetType = UNSET

    @property
    def started(self) -> bool:
        return self.step >= 0

    @property
    def complete(self) -> bool:
        return self.step >= len(self.steps)

    @property
    def current(self) -> QuestStep | None:
        if 0 <= self.step < len(self.steps):
            return self.steps[self.step]
        return None


class WorldState(Struct):
    tick: int
    seed: int
    rng: int
    map: TileMap
    items: dict[str, Item]
    player: Player
    #: Kept sorted by id: iteration order is part of the rules.
    npcs: list[Npc]
    #: The village's first quest. Further quests are in ``quests``; ``all_quests`` lists them all.
    quest: Quest
    #: Running totals of what rules created or destroyed, for conservation checks.
    gold_minted: int = 0
    items_minted: dict[str, int] = {}
    items_consumed: dict[str, int] = {}
    world_name: str = ""
    #: The quests after the first, each with its own step. Unset in a world of one quest, so a
    #: state written before there were several encodes and hashes as it did.
    quests: list[Quest] | UnsetType = UNSET

    @property
    def all_quests(self) -> list[Quest]:
        """Every quest of the world, the first one first (the order rules try them in)."""
        return [self.quest, *(self.quests or ())]

    def quest_by_id(self, quest_id: str) -> Quest | None:
        for q in self.all_quests:
            if q.id == quest_id:
                return q
        return None

    def npc(self, npc_id: str) -> Npc | None:
        for n in self.npcs:
            if n.id == npc_id:
                return n
        return None

    @property
    def hour(self) -> int:
        return (START_HOUR + self.tick // TICKS_PER_HOUR) % HOURS_PER_DAY

    @property
    def day(self) -> int:
        return 1 + (START_HOUR + self.tick // TICKS_PER_HOUR) // HOURS_PER_DAY


_clone_enc = msgspec.msgpack.Encoder()
_clone_dec = msgspec.msgpack.Decoder(WorldState)


def clone(state: WorldState) -> WorldState:
    """A deep, independent copy (the engine mutates the state it steps)."""
    return _clone_dec.decode(_clone_enc.encode(state))


def add_items(inv: dict[str, int], item: str, qty: int) -> None:
    n = inv.get(item, 0) + qty
    if n:
        inv[item] = n
    else:
        inv.pop(item, None)


__all__ = [
    "TICKS_PER_SECOND", "TICKS_PER_HOUR", "Item", "TileMap", "ScheduleEntry", "Turn", "Npc", "Player",
    "QuestStep", "Quest", "WorldState", "clone", "add_items",
]
