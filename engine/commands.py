"""Commands (inputs to ``step``) and events (its outputs).

One tagged Struct per message and one Union per direction, so the input log and every consumer
decode them with a single typed decoder.
"""

from __future__ import annotations

import enum

from msgspec import Struct


class Rejection(str, enum.Enum):
    """Why a rule said no. A player's mistake is a value, never an exception."""

    UNKNOWN_NPC = "unknown_npc"
    UNKNOWN_ITEM = "unknown_item"
    UNKNOWN_QUEST = "unknown_quest"
    BAD_DIRECTION = "bad_direction"
    BLOCKED = "blocked"
    STILL_MOVING = "still_moving"
    TOO_FAR = "too_far"
    NOT_TALKING = "not_talking"
    BAD_QUANTITY = "bad_quantity"
    NOT_FOR_SALE = "not_for_sale"
    OUT_OF_STOCK = "out_of_stock"
    INSUFFICIENT_GOLD = "insufficient_gold"
    PLAYER_LACKS_ITEM = "player_lacks_item"
    NPC_WONT_BUY = "npc_wont_buy"
    NPC_CANNOT_AFFORD = "npc_cannot_afford"
    WRONG_PRICE = "wrong_price"
    QUEST_ITEM = "quest_item"
    QUEST_NOT_AVAILABLE = "quest_not_available"
    QUEST_STEP_MISMATCH = "quest_step_mismatch"
    NOT_QUEST_GIVER = "not_quest_giver"
    TEXT_EMPTY = "text_empty"
    TEXT_TOO_LONG = "text_too_long"
    TEXT_BAD_CHARS = "text_bad_chars"
    TEXT_UNKNOWN_NAME = "text_unknown_name"
    TEXT_WRONG_PRICE = "text_wrong_price"
    BAD_SKIN_ID = "bad_skin_id"
    NOT_REQUESTED = "not_requested"
    #: The player asked for something the engine does (a sale, the hand-over) and the reply left it out.
    ACTION_MISSING = "action_missing"
    #: The line does not start with the fact the engine stated for it.
    TEXT_UNGROUNDED = "text_ungrounded"
    #: The line hands something over ("here is your clapper") that its action does not.
    TEXT_FALSE_HANDOVER = "text_false_handover"


# ---- NPC actions: what a dialogue proposal may ask the engine to do ------------------------------

class SellItem(Struct, tag="sell", frozen=True, omit_defaults=True):
    """The NPC sells ``qty`` units of ``item`` to the player at ``price`` each. (``qty`` left out
    when 1, so recordings and hashes made before it existed read and hash the same.)"""

    item: str
    price: int
    qty: int = 1


class GiveItem(Struct, tag="give", frozen=True):
    """The NPC hands the player a quest item (only at the quest step that calls for it)."""

    item: str


class StartQuest(Struct, tag="start_quest", frozen=True):
    quest: str


NpcAction = SellItem | GiveItem | StartQuest


# ---- Commands ----------------------------------------------------------------------------------

class Move(Struct, tag="move", frozen=True):
    dx: int
    dy: int


class Interact(Struct, tag="interact", frozen=True):
    npc: str


class EndTalk(Struct, tag="end_talk", frozen=True):
    pass


class Say(Struct, tag="say", frozen=True):
    npc: str
    text: str


class Buy(Struct, tag="buy", frozen=True):
    npc: str
    item: str
    qty: int = 1


class Sell(Struct, tag="sell", frozen=True):
    npc: str
    item: str
    qty: int = 1


class Give(Struct, tag="give", frozen=True):
    npc: str
    item: str
    qty: int = 1


class AcceptQuest(Struct, tag="accept_quest", frozen=True):
    quest: str


class NpcReply(Struct, tag="npc_reply", frozen=True):
    """A dialogue proposal the engine accepted: recorded so that replay needs no model."""

    npc: str
    text: str
    action: NpcAction | None = None


class WearSkin(Struct, tag="wear_skin", frozen=True):
    """An NPC puts on a skin (a verified LoRA personality, by skin id) or, with None, its own voice.
    The engine only checks the id's shape; verifying the bundle is the npc layer's job."""

    npc: str
    skin: str | None = None


Command = Move | Interact | EndTalk | Say | Buy | Sell | Give | AcceptQuest | NpcReply | WearSkin


# ---- Events ------------------------------------------------------------------------------------

class Rejected(Struct, tag="rejected", frozen=True):
    command: str
    reason: Rejection


class PlayerMoved(Struct, tag="player_moved", frozen=True):
    x: int
    y: int


class NpcMoved(Struct, tag="npc_moved", frozen=True):
    npc: str
    x: int
    y: int


class NpcActivity(Struct, tag="npc_activity", frozen=True):
    npc: str
    activity: str


class TalkStarted(Struct, tag="talk_started", frozen=True):
    npc: str


class TalkEnded(Struct, tag="talk_ended", frozen=True):
    npc: str


class PlayerSaid(Struct, tag="player_said", frozen=True):
    npc: str
    text: str


class NpcSaid(Struct, tag="npc_said", frozen=True):
    npc: str
    text: str
    action: NpcAction | None = None


class Traded(Struct, tag="traded", frozen=True):
    """Goods moved one way and gold the other. ``to_player`` is True for a purchase."""

    npc: str
    item: str
    qty: int
    gold: int
    to_player: bool


class Gave(Struct, tag="gave", frozen=True):
    npc: str
    item: str
    qty: int
    to_player: bool


class ItemMinted(Struct, tag="item_minted", frozen=True):
    item: str
    qty: int
    reason: str


class ItemConsumed(Struct, tag="item_consumed", frozen=True):
    item: str
    qty: int
    reason: str


class GoldMinted(Struct, tag="gold_minted", frozen=True):
    amount: int
    reason: str


class QuestStarted(Struct, tag="quest_started", frozen=True):
    quest: str


class QuestAdvanced(Struct, tag="quest_advanced", frozen=True):
    quest: str
    step: int


class QuestCompleted(Struct, tag="quest_completed", frozen=True):
    quest: str


class SkinWorn(Struct, tag="skin_worn", frozen=True):
    npc: str
    skin: str | None


Event = (
    Rejected | PlayerMoved | NpcMoved | NpcActivity | TalkStarted | TalkEnded | PlayerSaid | NpcSaid
    | Traded | Gave | ItemMinted | ItemConsumed | GoldMinted | QuestStarted | QuestAdvanced
    | QuestCompleted | SkinWorn
)

def command_name(cmd: Command) -> str:
    return type(cmd).__struct_config__.tag  # type: ignore[return-value]
