"""Rules, the quest, and the dialogue seam's validation."""

import re

import pytest

from engine.commands import (
    AcceptQuest, Buy, Give, GiveItem, Interact, Move, NpcReply, Rejected, Rejection, Say, Sell,
    SellItem, StartQuest,
)
from engine.dialogue import (
    DialogueProposal, DialogueTurn, build_request, fallback_line, validate_proposal,
)
from engine.sim import step
from engine.state import MEMORY_TURNS
from engine.world import WorldDataError, load_world

from tests.conftest import place_player_near


def reasons(events):
    return [e.reason for e in events if isinstance(e, Rejected)]


def test_buy_and_sell_move_goods_and_gold(world):
    s = place_player_near(world, "tobin")
    s, ev = step(s, [Buy(npc="tobin", item="rope", qty=2)])
    assert s.player.inventory == {"rope": 2} and s.player.gold == 30 - 12
    assert s.npc("tobin").inventory["rope"] == 2
    s, ev = step(s, [Sell(npc="tobin", item="rope", qty=1)])
    assert s.player.gold == 30 - 12 + 3 and s.player.inventory == {"rope": 1}


@pytest.mark.parametrize("cmd,reason", [
    (Buy(npc="tobin", item="dagger"), Rejection.NOT_FOR_SALE),
    (Buy(npc="tobin", item="lantern", qty=4), Rejection.OUT_OF_STOCK),
    (Buy(npc="tobin", item="iron_ingot", qty=3), Rejection.INSUFFICIENT_GOLD),
    (Buy(npc="tobin", item="rope", qty=0), Rejection.BAD_QUANTITY),
    (Buy(npc="tobin", item="rope", qty=-2), Rejection.BAD_QUANTITY),
    (Buy(npc="tobin", item="mithril"), Rejection.UNKNOWN_ITEM),
    (Buy(npc="maren", item="bread"), Rejection.NOT_TALKING),
    (Buy(npc="ghost", item="bread"), Rejection.UNKNOWN_NPC),
    (Sell(npc="tobin", item="rope"), Rejection.PLAYER_LACKS_ITEM),
    (Give(npc="tobin", item="rope"), Rejection.PLAYER_LACKS_ITEM),
    (Move(dx=2, dy=0), Rejection.BAD_DIRECTION),
    (Interact(npc="hilda"), Rejection.TOO_FAR),
    (AcceptQuest(quest="silent_bell"), Rejection.NOT_QUEST_GIVER),
    (AcceptQuest(quest="dragon"), Rejection.UNKNOWN_QUEST),
])
def test_rejections_are_typed_and_change_nothing(world, cmd, reason):
    from engine.hashing import state_hash
    from engine.state import clone
    s = place_player_near(world, "tobin")
    before = clone(s)
    s, ev = step(s, [cmd])
    assert reasons(ev) == [reason]
    step(before, [])
    assert state_hash(s) == state_hash(before)


def test_npc_cannot_afford(world):
    s = place_player_near(world, "bram")
    s.player.inventory["iron_ingot"] = 10
    s.npc("bram").gold = 5
    s, ev = step(s, [Sell(npc="bram", item="iron_ingot")])
    assert reasons(ev) == [Rejection.NPC_CANNOT_AFFORD]


def test_full_quest(world):
    s = place_player_near(world, "maren")
    s, ev = step(s, [AcceptQuest(quest="silent_bell")])
    assert s.quest.step == 0
    s = place_player_near(s, "tobin")
    s, ev = step(s, [Buy(npc="tobin", item="iron_ingot")])
    assert s.quest.step == 1  # obtained
    s = place_player_near(s, "maren")
    s, ev = step(s, [Give(npc="maren", item="iron_ingot")])
    assert s.quest.step == 1 and s.npc("maren").inventory.get("iron_ingot") == 1  # a gift, no progress
    s.npc("maren").inventory.pop("iron_ingot")
    s.player.inventory["iron_ingot"] = 1
    s = place_player_near(s, "bram")
    s, ev = step(s, [Give(npc="bram", item="iron_ingot")])
    assert s.quest.step == 2 and "iron_ingot" not in s.npc("bram").inventory  # used up
    # The clapper comes from Bram's reply: only Bram, only now, only when asked for.
    s, ev = step(s, [NpcReply(npc="bram", text="Here.", action=GiveItem(item="bell_clapper"))])
    assert reasons(ev) == [Rejection.NOT_REQUESTED]
    s, ev = step(s, [Say(npc="bram", text="Is the clapper ready?")])
    s, ev = step(s, [NpcReply(npc="bram", text="Here.", action=GiveItem(item="bell_clapper"))])
    assert s.player.inventory.get("bell_clapper") == 1 and s.quest.step == 3
    s, ev = step(s, [Say(npc="bram", text="Can I have another clapper?")])
    s, ev = step(s, [NpcReply(npc="bram", text="Another!", action=GiveItem(item="bell_clapper"))])
    assert reasons(ev) == [Rejection.QUEST_STEP_MISMATCH]
    # A quest item cannot be handed to the wrong person (it would strand the quest).
    s, ev = step(s, [Give(npc="bram", item="bell_clapper")])
    assert reasons(ev) == [Rejection.QUEST_ITEM]
    s = place_player_near(s, "maren")
    gold = s.player.gold
    s, ev = step(s, [Give(npc="maren", item="bell_clapper")])
    assert s.quest.step == 4 and s.player.gold == gold + 15
    s = place_player_near(s, "hilda")
    assert s.quest.complete and s.player.gold == gold + 40


def test_dialogue_memory_is_bounded(world):
    s = place_player_near(world, "maren")
    for i in range(MEMORY_TURNS * 3):
        s, _ = step(s, [Say(npc="maren", text=f"line {i}")])
    mem = s.npc("maren").memory
    assert len(mem) == MEMORY_TURNS and mem[-1].text == f"line {MEMORY_TURNS * 3 - 1}"


def test_request_is_scoped_to_the_npc(world):
    s = place_player_near(world, "tobin")
    s, _ = step(s, [Say(npc="tobin", text="I'd like an iron ingot, please.")])
    req = build_request(s, "tobin", "I'd like an iron ingot, please.")
    assert {o.item for o in req.sells} == {"iron_ingot", "rope", "lantern", "apple"}
    assert all(o.price == s.npc("tobin").sells[o.item] for o in req.sells)
    assert req.legal_actions == [SellItem(item="iron_ingot", price=12)] == [req.action]
    assert req.fact == "One iron ingot, 12 gold."
    assert "Hilda" not in req.known_names  # Tobin's facts never mention her
    maren = build_request(place_player_near(s, "maren"), "maren", "hi")
    assert maren.legal_actions == [] and maren.action is None and maren.fact == ""
    assert StartQuest(quest="silent_bell") in maren.possible_actions
    offer = build_request(s, "maren", "Can I help you with anything?")
    assert offer.legal_actions == [StartQuest(quest="silent_bell")]


@pytest.mark.parametrize("proposal,reason", [
    (DialogueProposal(text="Free iron for you!", action=SellItem(item="iron_ingot", price=0)),
     Rejection.WRONG_PRICE),
    (DialogueProposal(text="Here you go.", action=SellItem(item="dagger", price=25)),
     Rejection.NOT_FOR_SALE),
    (DialogueProposal(text="Take the clapper.", action=GiveItem(item="bell_clapper")),
     Rejection.QUEST_STEP_MISMATCH),
    (DialogueProposal(text="Help Maren.", action=StartQuest(quest="silent_bell")),
     Rejection.NOT_QUEST_GIVER),
    (DialogueProposal(text="Iron is 7 gold today."), Rejection.TEXT_WRONG_PRICE),
    (DialogueProposal(text="Ask Hilda at the guardhouse."), Rejection.TEXT_UNKNOWN_NAME),
    (DialogueProposal(text=""), Rejection.TEXT_EMPTY),
    (DialogueProposal(text="x" * 1000), Rejection.TEXT_TOO_LONG),
    (DialogueProposal(text="bad\x00byte"), Rejection.TEXT_BAD_CHARS),
])
def test_illegal_proposals_are_rejected(world, proposal, reason):
    s = place_player_near(world, "tobin")
    assert validate_proposal(s, "tobin", proposal) == reason


def test_turn_retries_then_falls_back_and_fallback_is_legal(world):
    s = place_player_near(world, "tobin")
    turn = DialogueTurn("tobin", "give me everything free", max_attempts=2)
    bad = DialogueProposal(text="All free!", action=SellItem(item="lantern", price=0))
    assert turn.offer(s, bad) is None and turn.feedback
    reply = turn.offer(s, bad)
    assert turn.fallback and reply.action is None
    gold = s.player.gold
    s, ev = step(s, [reply])
    assert not reasons(ev) and s.player.gold == gold
    for npc in s.npcs:
        t = place_player_near(s, npc.id)
        assert validate_proposal(t, npc.id, fallback_line(t, npc.id)) is None


def test_bad_world_data_names_the_problem(tmp_path):
    from engine.world import default_world_path
    src = default_world_path().read_text()
    (tmp_path / "village.map").write_text((default_world_path().parent / "village.map").read_text())
    cases = {
        'sells = { horseshoe = 5, dagger = 25, nails = 2 }': ('sells = { horseshoe = 5, sword = 9 }', "unknown item 'sword'"),
        'x = 32\ny = 5\ngold = 40': ('x = 0\ny = 0\ngold = 40', "npc bram: tile (0, 0) is not walkable"),
        'giver = "maren"': ('giver = "nobody"', "unknown giver"),
    }
    for old, (new, msg) in cases.items():
        assert old in src
        (tmp_path / "w.toml").write_text(src.replace(old, new))
        (tmp_path / "w.toml").rename(tmp_path / "village.toml")
        with pytest.raises(WorldDataError, match=re.escape(msg)):
            load_world(tmp_path / "village.toml")


def test_wear_skin_checks_the_id_shape(world):
    from engine.commands import SkinWorn, WearSkin
    sid = "ab" * 32
    s, ev = step(world, [WearSkin(npc="bram", skin=sid)])
    assert s.npc("bram").skin == sid and ev == [SkinWorn(npc="bram", skin=sid)]
    s, ev = step(s, [WearSkin(npc="bram", skin="../../etc/passwd")])
    assert reasons(ev) == [Rejection.BAD_SKIN_ID] and s.npc("bram").skin == sid
    s, ev = step(s, [WearSkin(npc="ghost", skin=sid)])
    assert reasons(ev) == [Rejection.UNKNOWN_NPC]
    s, ev = step(s, [WearSkin(npc="bram", skin=None)])
    assert s.npc("bram").skin is None


@pytest.mark.parametrize("words,item,ok", [
    ("Two mugs of ale, please!", "ale", True),
    ("I'll take the coil of rope", "rope", True),
    ("One loaf of bread, please", "bread", True),
    ("Sell me a bag of nails.", "nails", True),
    ("Got any nails?", "nails", False),  # asking is not buying
    ("What does a coil of rope cost?", "rope", False),
    ("Where do iron ingots come from?", "iron_ingot", False),
    ("Give me all your ingots for free", "iron_ingot", False),
    ("Hello there", "ale", False),
    ("Bread please", "ale", False),
])
def test_an_npc_sells_only_what_the_player_asked_to_buy(world, words, item, ok):
    npc_id = {"ale": "maren", "bread": "maren", "nails": "bram"}.get(item, "tobin")
    qty = 2 if words.startswith("Two") else 1
    s = place_player_near(world, npc_id)
    s, _ = step(s, [Say(npc=npc_id, text=words)])
    price = s.npc(npc_id).sells[item]
    if qty > 1:  # another quantity than asked for is not what was asked for either
        _, ev = step(s, [NpcReply(npc=npc_id, text="Here you are.",
                                  action=SellItem(item=item, price=price))])
        assert reasons(ev) == [Rejection.NOT_REQUESTED]
    s2, ev = step(s, [NpcReply(npc=npc_id, text="Here you are.",
                               action=SellItem(item=item, price=price, qty=qty))])
    assert (reasons(ev) == []) == ok
    if not ok:
        assert reasons(ev) == [Rejection.NOT_REQUESTED]


def test_a_request_is_answered_once(world):
    s = place_player_near(world, "tobin")
    s, _ = step(s, [Say(npc="tobin", text="A coil of rope, please.")])
    sale = NpcReply(npc="tobin", text="One coil of rope, 6 gold.", action=SellItem(item="rope", price=6))
    s, ev = step(s, [sale])
    assert not reasons(ev) and s.player.inventory == {"rope": 1}
    s, ev = step(s, [sale])
    assert reasons(ev) == [Rejection.NOT_REQUESTED] and s.player.inventory == {"rope": 1}


@pytest.mark.parametrize("npc_id,words,proposal,reason", [
    # the fact the engine stated must open the line
    ("tobin", "What does a coil of rope cost?", DialogueProposal(text="Rope is cheap."),
     Rejection.TEXT_UNGROUNDED),
    # an action the player asked for must be taken
    ("tobin", "A coil of rope, please.", DialogueProposal(text="One coil of rope, 6 gold."),
     Rejection.ACTION_MISSING),
    # a hand-over in words that the action does not make
    ("maren", "Hello.", DialogueProposal(text="Here is your bell clapper."), Rejection.TEXT_FALSE_HANDOVER),
    ("maren", "Hello.", DialogueProposal(text="Here you go, traveller."), Rejection.TEXT_FALSE_HANDOVER),
    ("tobin", "Give me all your ingots for free",
     DialogueProposal(text="Nothing here is free: an iron ingot is 12 gold. I'll give you everything."),
     Rejection.TEXT_FALSE_HANDOVER),
    ("tobin", "A coil of rope, please.",
     DialogueProposal(text="One coil of rope, 6 gold. Here is your lantern.", action=SellItem(item="rope", price=6)),
     Rejection.TEXT_FALSE_HANDOVER),
    # a price that is not the one asked about
    ("tobin", "What does a coil of rope cost?",
     DialogueProposal(text="A coil of rope is 6 gold. A bargain at 10 gold."), Rejection.TEXT_WRONG_PRICE),
])
def test_ungrounded_lines_are_refused(world, npc_id, words, proposal, reason):
    s = place_player_near(world, npc_id)
    s, _ = step(s, [Say(npc=npc_id, text=words)])
    assert validate_proposal(s, npc_id, proposal) == reason


@pytest.mark.parametrize("npc_id,words,proposal", [
    ("tobin", "What does a coil of rope cost?", DialogueProposal(text="A coil of rope is 6 gold. Fine rope.")),
    ("tobin", "A coil of rope, please.",
     DialogueProposal(text="One coil of rope, 6 gold. Here you go!", action=SellItem(item="rope", price=6))),
    ("maren", "Who sells iron ingots?",
     DialogueProposal(text="Tobin sells iron ingots at the market stall, 12 gold each.")),
])
def test_grounded_lines_pass(world, npc_id, words, proposal):
    s = place_player_near(world, npc_id)
    s, _ = step(s, [Say(npc=npc_id, text=words)])
    assert validate_proposal(s, npc_id, proposal) is None


def test_the_fallback_says_the_fact_and_does_what_was_asked(world):
    s = place_player_near(world, "tobin")
    s, _ = step(s, [Say(npc="tobin", text="I need to buy an iron ingot, please.")])
    turn = DialogueTurn("tobin", "I need to buy an iron ingot, please.", max_attempts=1)
    reply = turn.offer(s, DialogueProposal(text="Nice weather."))
    assert turn.fallback and reply.action == SellItem(item="iron_ingot", price=12)
    assert reply.text == "One iron ingot, 12 gold."
    s, ev = step(s, [reply])
    assert not reasons(ev) and s.player.inventory == {"iron_ingot": 1}


def test_a_refused_line_that_opens_with_the_fact_is_cut_back_to_the_fact(world):
    s = place_player_near(world, "tobin")
    words = "What does a lantern cost?"
    s, _ = step(s, [Say(npc="tobin", text=words)])
    turn = DialogueTurn("tobin", words, max_attempts=3)
    # The fact, then an invented person: refused, and cut back instead of retried.
    reply = turn.offer(s, DialogueProposal(text="A lantern is 10 gold. Ask Zebulon for more."))
    assert reply is not None and turn.salvaged and not turn.fallback and turn.attempts == 1
    assert reply.text == "A lantern is 10 gold." and reply.action is None
    # A line that does not open with the fact is retried as before.
    turn = DialogueTurn("tobin", words, max_attempts=3)
    assert turn.offer(s, DialogueProposal(text="Ask Zebulon, he knows.")) is None
    assert not turn.salvaged
