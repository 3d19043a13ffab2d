"""Several quests: authored as data, each with its own step, with steps done by conversation
(a message delivered, a villager persuaded, a trade), decided by the engine; old saves and
recordings of the one-quest world still load, replay and hash as they did."""

from pathlib import Path

import msgspec
import pytest

from engine.books import explained
from engine.commands import (
    GiveItem, Give, ItemMinted, NpcReply, QuestAdvanced, Rejected, Rejection,
    Say, StartQuest,
)
from engine.dialogue import build_request, fallback_line
from engine.hashing import state_hash
from engine.intent import recognise
from engine.replay import load_log, replay
from engine.saves import SAVE_VERSION, load_game
from engine.sim import step
from engine.world import WorldDataError, load_world, new_game
from game.headless import Director, load_script, walkthrough_script
from npc.scripted import ScriptedResponder
from tests.conftest import place_player_near, world_totals

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
QUESTS = ["silent_bell", "watch_lantern", "honest_price"]


def talk(state, npc, words):
    """Say ``words`` to ``npc`` and commit the engine's own answer (the fact and its action)."""
    state = place_player_near(state, npc)
    state, said = step(state, [Say(npc=npc, text=words)])
    reply = fallback_line(state, npc)
    state, events = step(state, [NpcReply(npc=npc, text=reply.text, action=reply.action)])
    assert not any(isinstance(e, Rejected) for e in said + events), said + events
    return state, events


def started(quest_id, at_step=0, seed=1):
    state = new_game(seed)
    state.quest_by_id(quest_id).step = at_step
    return state


# ---- the data ----------------------------------------------------------------------------------

def test_the_village_has_three_quests_with_steps_that_need_conversation(world):
    assert [q.id for q in world.all_quests] == QUESTS
    assert world.quest.id == "silent_bell" and all(not q.started for q in world.all_quests)
    kinds = {s.kind for q in world.all_quests for s in q.steps}
    assert {"tell", "persuade", "give", "receive"} <= kinds
    assert len({q.giver for q in world.all_quests}) == 3  # one quest per giver: "Can I help?" is clear
    # What a villager answers to a spoken step hands nothing over (it carries no action).
    from engine.dialogue import handed_over
    for q in world.all_quests:
        for s in q.steps:
            if s.kind in ("tell", "persuade"):
                assert handed_over(world, s.reply) == (False, set()), s.reply


@pytest.mark.parametrize("bad,named", [
    ('words = []', "needs words"),
    ('words = ["lantern|"]', "needs words"),
    ('reply = "He said \\"no\\"."', "double quotes"),
    ('npc = "nobody"', "unknown npc"),
])
def test_a_badly_authored_spoken_step_is_refused_by_name(tmp_path, bad, named):
    text = (ROOT / "assets" / "village.toml").read_text()
    key = bad.split(" = ")[0]
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith('kind = "tell"'))
    j = next(k for k in range(i, len(lines)) if lines[k].startswith(f"{key} = "))
    lines[j] = bad
    (tmp_path / "village.toml").write_text("\n".join(lines))
    (tmp_path / "village.map").write_text((ROOT / "assets" / "village.map").read_text())
    with pytest.raises(WorldDataError, match=named) as e:
        load_world(tmp_path / "village.toml")
    assert "watch_lantern step 0" in str(e.value)


# ---- each quest, played through its walk-through with the engine voice -------------------------

@pytest.mark.parametrize("quest_id", QUESTS)
def test_each_quest_completes_by_its_script_with_the_engine_voice_and_clean_books(quest_id):
    state = new_game(seed=3)
    lines = []
    director = Director(state, ScriptedResponder(), load_script(walkthrough_script(quest_id), state),
                        out=lines.append)
    unexplained = []
    real_step = director._step

    def checked(cmds):
        before = world_totals(director.state)
        events = real_step(cmds)
        if not explained(before, world_totals(director.state), events):
            unexplained.append((director.state.tick, events))
        return events
    director._step = checked
    director.run(3000)
    q = director.state.quest_by_id(quest_id)
    assert q.complete, "\n".join(lines)
    assert not unexplained
    assert not any(t["fallback"] for t in director.turns), director.turns
    others = [o for o in director.state.all_quests if o.id != quest_id]
    assert all(not o.started for o in others)  # one quest's script touches no other


# ---- steps done by conversation: the engine decides --------------------------------------------

def test_a_message_is_delivered_only_by_a_line_that_carries_it():
    state = started("watch_lantern")
    state, _ = talk(state, "tobin", "Good day, Tobin. Busy?")
    assert state.quest_by_id("watch_lantern").step == 0
    state, _ = talk(state, "maren", "The watch needs a lantern.")  # the wrong villager
    assert state.quest_by_id("watch_lantern").step == 0
    state, events = talk(state, "tobin", "Captain Hilda needs a lantern for the watch.")
    assert state.quest_by_id("watch_lantern").step == 1
    assert QuestAdvanced(quest="watch_lantern", step=1) in events
    said = state.npc("tobin").memory[-1].text
    assert said.startswith("A lantern for the watch?")  # the authored reply, the engine's fact


def test_persuasion_needs_the_true_fact_and_no_reply_can_stand_in_for_it():
    state = started("honest_price")
    # A wrong price persuades nobody, however agreeable the reply the voice proposes.
    state = place_player_near(state, "tobin")
    state, _ = step(state, [Say(npc="tobin", text="Bram pays 10 gold for an ingot.")])
    assert recognise(state, "tobin", "Bram pays 10 gold for an ingot.").kind != "persuade"
    state, events = step(state, [NpcReply(npc="tobin", text="Fair enough, you win.")])
    assert state.quest_by_id("honest_price").step == 0
    assert not any(isinstance(e, QuestAdvanced) for e in events)
    # The fact the engine knows (what Bram pays, from his own trade) wins Tobin over.
    assert state.npc("bram").buys["iron_ingot"] == 8
    state, events = talk(state, "tobin", "Bram only ever pays eight gold for an iron ingot.")
    assert state.quest_by_id("honest_price").step == 1
    # The reply is not the decider: a different line, once the right case was made, still does it.
    state = started("honest_price", seed=2)
    state = place_player_near(state, "tobin")
    state, _ = step(state, [Say(npc="tobin", text="The smith pays 8 gold an ingot.")])
    state, events = step(state, [NpcReply(npc="tobin", text="Hmm. Fine.")])
    assert state.quest_by_id("honest_price").step == 1


def test_a_trade_hands_over_only_after_the_payment_and_from_the_villagers_stock():
    state = started("watch_lantern", at_step=1)
    state.player.inventory["nails"] = 1
    state = place_player_near(state, "tobin")
    # Before the nails are given, asking for the lantern is not the hand-over (it is buying one).
    state, _ = step(state, [Say(npc="tobin", text="May I have the lantern?")])
    assert not isinstance(build_request(state, "tobin", "May I have the lantern?").action, GiveItem)
    state, events = step(state, [NpcReply(npc="tobin", text="Here is the lantern.",
                                          action=GiveItem(item="lantern"))])
    assert Rejected(command="npc_reply", reason=Rejection.QUEST_STEP_MISMATCH) in events
    state, events = step(state, [Give(npc="tobin", item="nails")])
    assert state.quest_by_id("watch_lantern").step == 2
    stock = state.npc("tobin").inventory["lantern"]
    state, events = talk(state, "tobin", "May I have the lantern now?")
    assert state.player.inventory.get("lantern") == 1
    assert state.npc("tobin").inventory["lantern"] == stock - 1
    assert not any(isinstance(e, ItemMinted) for e in events)  # handed over, not conjured
    assert state.quest_by_id("watch_lantern").step == 3


def test_asking_about_each_quest_answers_for_that_quest():
    state = new_game(1)
    cases = [("hilda", "What's wrong with the watch?", "watch_lantern"),
             ("maren", "What's wrong with the bell?", "silent_bell"),
             ("bram", "Is there some trouble I could look into?", "honest_price"),
             ("tobin", "Can I help you?", "silent_bell")]
    for npc, words, quest in cases:
        s = place_player_near(new_game(1), npc)
        s, _ = step(s, [Say(npc=npc, text=words)])
        intent = recognise(s, npc, words)
        assert (intent.kind, intent.quest) == ("ask_quest", quest), (npc, words, intent)
    # Each giver offers its own quest.
    for npc, quest in (("maren", "silent_bell"), ("hilda", "watch_lantern"), ("bram", "honest_price")):
        s = place_player_near(new_game(1), npc)
        s, _ = step(s, [Say(npc=npc, text="Can I help?")])
        assert build_request(s, npc, "Can I help?").action == StartQuest(quest=quest)
    # Under way, the quest a villager has a part in is the one it speaks of.
    state.quest_by_id("watch_lantern").step = 1
    s = place_player_near(state, "hilda")
    s, _ = step(s, [Say(npc="hilda", text="Any news about the lantern?")])
    req = build_request(s, "hilda", "Any news about the lantern?")
    assert req.intent.quest == "watch_lantern" and "nails" in req.fact


def test_quests_run_side_by_side_each_with_its_own_step():
    state = new_game(1)
    state, _ = talk(state, "maren", "Can I help?")
    state, _ = talk(state, "bram", "Can I help?")
    state, _ = talk(state, "hilda", "Can I help?")
    assert [q.step for q in state.all_quests] == [0, 0, 0]
    state, _ = talk(state, "tobin", "Bram pays 8 gold for an iron ingot.")
    state, _ = talk(state, "tobin", "May I have the ingot for Bram?")
    # The ingot Tobin sends Bram also counts for the bell: the player holds one.
    assert [q.step for q in state.all_quests] == [1, 0, 2]
    state = place_player_near(state, "bram")
    state, _ = step(state, [Give(npc="bram", item="iron_ingot")])
    # One ingot serves one quest: the first that wants it.
    assert [q.step for q in state.all_quests] == [2, 0, 2]


# ---- old saves and recordings ------------------------------------------------------------------

def test_a_recording_of_the_one_quest_world_replays_tick_for_tick():
    log = load_log(DATA / "silent_bell_v1.log")
    assert log.initial.quests is msgspec.UNSET
    res = replay(log)
    assert res.ok and res.ticks == 1500
    assert res.final_hash == "6ccce124b95b861405dca67e60d0efdb1f1a353341245b1da6f724aea8d05de5"


def test_a_state_of_one_quest_hashes_as_before_the_quests_list_existed():
    log = load_log(DATA / "silent_bell_v1.log")
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(log.initial))
    assert "quests" not in raw and "keywords" not in raw["quest"]
    assert all("words" not in s and "reply" not in s for s in raw["quest"]["steps"])


def test_a_version_1_save_gains_the_new_quests_and_keeps_its_own():
    assert SAVE_VERSION == 2
    state = load_game(DATA / "silent_bell_v1.save")
    assert [(q.id, q.step) for q in state.all_quests] == [
        ("silent_bell", 2), ("watch_lantern", -1), ("honest_price", -1)]
    assert state.quests == new_game(state.seed).quests


def test_a_version_1_save_of_another_world_is_kept_as_it_was(tmp_path):
    import blake3
    raw = msgspec.msgpack.decode((DATA / "silent_bell_v1.save").read_bytes())
    raw["state"]["world_name"] = "Elsewhere"
    raw["state_hash"] = blake3.blake3(
        msgspec.msgpack.Encoder(order="sorted").encode(raw["state"])).hexdigest()
    path = tmp_path / "elsewhere.save"
    path.write_bytes(msgspec.msgpack.encode(raw))
    state = load_game(path)
    assert state.quests is msgspec.UNSET and [q.id for q in state.all_quests] == ["silent_bell"]


def test_a_save_of_several_quests_round_trips(tmp_path):
    from engine.saves import save_game
    state = started("honest_price", at_step=1)
    save_game(tmp_path / "g.save", state)
    back = load_game(tmp_path / "g.save")
    assert state_hash(back) == state_hash(state)
    assert back.quest_by_id("honest_price").step == 1


# ---- the model voice ---------------------------------------------------------------------------

@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("quest_id", QUESTS)
def test_each_quest_completes_with_the_model_voice_in_the_shipped_skins(model_voice, quest_id):
    from game.village_skins import dress_villagers
    seed = 1
    state = new_game(seed)
    dressing = dress_villagers(state)
    assert dressing, "the shipped skins could not be set up"
    state, _ = step(state, dressing)
    lines = []
    director = Director(state, model_voice, load_script(walkthrough_script(quest_id), state),
                        out=lines.append)
    director.run(state.tick + 8000)
    q = director.state.quest_by_id(quest_id)
    assert q.complete, f"stalled at step {q.step + 1}/{len(q.steps)}:\n" + "\n".join(lines[-30:])


# ---- what the player sees ----------------------------------------------------------------------

def test_the_side_panel_lists_the_quests_under_way_and_counts_the_rest(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame
    from game.hud import board_quests, draw_side_panel, quest_lines
    state = new_game(1)
    shown, rest = board_quests(state)
    assert [q.id for q in shown] == ["silent_bell"] and rest == "2 more quests, 0 done"
    state.quest_by_id("watch_lantern").step = 2
    state.quest_by_id("honest_price").step = 3  # complete
    shown, rest = board_quests(state)
    assert [q.id for q in shown] == ["watch_lantern"] and rest == "2 more quests, 1 done"
    assert quest_lines(state, shown[0]) == ("Step 3 of 4", "Ask Tobin for the lantern.")
    assert quest_lines(state)[0] == "Not started"  # the first quest, as before
    pygame.init()
    try:
        surface = pygame.Surface((320, 720))
        draw_side_panel(surface, surface.get_rect(), state, None, [], None)
    finally:
        pygame.quit()


def test_notices_name_the_quest_that_moved():
    from engine.commands import QuestCompleted, QuestStarted
    from game.notices import describe
    state = new_game(1)
    assert describe(state, QuestStarted(quest="honest_price"))[0] == "Quest started: An Honest Price."
    assert describe(state, QuestAdvanced(quest="watch_lantern", step=1))[0] == \
        "A Lantern for the Watch: step 2 of 4."
    assert describe(state, QuestCompleted(quest="silent_bell"))[0] == "Quest complete: The Silent Bell!"


# ---- the engine's reading of lines about the later quests --------------------------------------

# (npc, quest, its step, words, intent kind, intent's quest, action kind, a piece the fact holds)
QUEST_CASES = [
    ("hilda", "watch_lantern", -1, "Can I help, captain?", "accept", "watch_lantern", "StartQuest", "Tobin"),
    ("hilda", "watch_lantern", -1, "Why is the patrol worried?", "ask_quest", "watch_lantern", None, "lantern"),
    ("tobin", "watch_lantern", 0, "The guards need a lamp, Tobin.", "tell", "watch_lantern", None, "nails"),
    ("tobin", "watch_lantern", 0, "Hilda sends her greetings.", "small_talk", None, None, ""),
    ("tobin", "watch_lantern", 0, "Sell me a lantern.", "buy", None, "SellItem", "10 gold"),
    ("tobin", "watch_lantern", 2, "Can I have the lantern now?", "give", "watch_lantern", "GiveItem", "lantern"),
    ("tobin", "watch_lantern", 2, "How much is a lantern?", "ask_price", None, None, "10 gold"),
    ("hilda", "watch_lantern", 1, "What's the news about the lantern?", "ask_quest", "watch_lantern", None, "nails"),
    ("bram", "honest_price", -1, "Need a hand, smith?", "accept", "honest_price", "StartQuest", "Tobin"),
    ("bram", "honest_price", -1, "Can I help you fix the inn's bell?", "ask_quest", "silent_bell", None,
     "Maren"),
    ("bram", "honest_price", -1, "I'd help with the bell clapper.", "ask_quest", "silent_bell", None,
     "Maren"),
    ("bram", "honest_price", 0, "Would you buy an iron ingot?", "sell", None, None, "8 gold"),
    ("tobin", "honest_price", 0, "Bram pays eight gold an ingot, no more.", "persuade", "honest_price", None,
     "Fair enough"),
    ("tobin", "honest_price", 0, "Bram pays 10 gold for an ingot.", "ask_price", None, None, "12 gold"),
    ("tobin", "honest_price", 1, "Give me the ingot for Bram.", "give", "honest_price", "GiveItem", "iron ingot"),
    ("bram", "honest_price", 2, "What now?", "ask_quest", "honest_price", None, "iron ingot"),
]


@pytest.mark.parametrize("npc,quest,at,words,kind,about,action,fact", QUEST_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3][:24]}" for c in QUEST_CASES])
def test_lines_about_the_later_quests(npc, quest, at, words, kind, about, action, fact):
    from engine.intent import candidate_intents
    state = started(quest, at_step=at)
    state = place_player_near(state, npc)
    state, _ = step(state, [Say(npc=npc, text=words)])
    req = build_request(state, npc, words)
    assert (req.intent.kind, req.intent.quest) == (kind, about), req.intent
    assert (type(req.action).__name__ if req.action else None) == action, req.action
    if isinstance(req.action, StartQuest):
        assert req.action.quest == quest
    assert fact in req.fact, req.fact
    assert req.intent in candidate_intents(state, npc) or req.intent.kind in ("buy", "sell")
