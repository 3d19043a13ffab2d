"""The dialogue-quality measure: its question set (tests/data/dialogue_questions.toml, asked by
tools/bench/dialogue.py), and the quest finishing with the model's voice."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    """tools/bench/dialogue.py as a module (tools/ is not a package)."""
    name = "hearth_dialogue_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "bench" / "dialogue.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def questions():
    return _bench().load_questions()


def test_the_question_set_covers_every_villager_and_action_rule(questions):
    assert len(questions) >= 60
    assert {q.npc for q in questions} == {"bram", "maren", "tobin", "hilda"}
    rules = {q.action.split(":")[0] for q in questions}
    assert rules == {"none", "no_sale", "sale", "give", "start_quest"}
    assert sum(q.premise for q in questions) >= 5
    assert sum(bool(q.fact) for q in questions) >= 40
    # The quest is asked about before it starts, at each of its steps and after it ends.
    assert {q.quest_step for q in questions} == set(range(-1, 6))
    lines = [q.line.lower() for q in questions]
    assert len(set(lines)) == len(lines)
    for q in questions:
        re.compile(q.fact, re.IGNORECASE)


def test_expected_sales_and_hand_overs_are_possible(questions):
    """A question whose rule is a sale or a hand-over asks for something the engine can grant."""
    from engine import rules
    from engine.commands import GiveItem
    bench = _bench()
    for q in questions:
        kind, _, item = q.action.partition(":")
        if kind not in ("sale", "give"):
            continue
        state = bench.question_state(q)
        npc = state.npc(q.npc)
        if kind == "sale":
            # (a sale is legal only once the player has asked for it: check stock, price and gold)
            assert rules.check_buy(state, npc, item, 1) is None, q
        else:
            assert GiveItem(item=item) in rules.possible_npc_actions(state, npc), q


def test_every_question_is_set_up_with_the_engine(questions):
    bench = _bench()
    for q in questions:
        state = bench.question_state(q)
        assert state.player.talking_to == q.npc
        # Walking up to Hilda when the quest asks to talk to her finishes it, as in play.
        want = 5 if (q.quest, q.npc, q.quest_step) == ("silent_bell", "hilda", 4) else q.quest_step
        assert state.quest_by_id(q.quest).step == want, q
        for item, n in q.inventory.items():
            assert state.player.inventory.get(item, 0) >= n, q


def test_no_question_copies_a_training_line(questions):
    """The set measures what the villagers were not shown: no player line in the training data
    may share half of a question's words (Jaccard similarity of the word sets)."""
    bench = _bench()
    training = bench.training_lines()
    assert training
    close = [(q.line, *bench.nearest_training_line(q.line, training)) for q in questions]
    close = [c for c in close if c[1] >= bench.OVERLAP_LIMIT]
    assert not close, close


def test_scoring_rules():
    from engine.commands import Gave, QuestStarted, Traded
    bench = _bench()
    sale = [Traded(npc="tobin", item="rope", qty=1, gold=6, to_player=True)]
    assert bench.action_ok("sale:rope", bench.committed(sale))
    assert not bench.action_ok("no_sale", bench.committed(sale))
    assert not bench.action_ok("sale:lantern", bench.committed(sale))
    assert bench.action_ok("give:bell_clapper", bench.committed(
        [Gave(npc="bram", item="bell_clapper", qty=1, to_player=True)]))
    assert not bench.action_ok("none", bench.committed([QuestStarted(quest="silent_bell")]))
    assert bench.action_ok("none", [])
    assert bench.agrees("Here you go, the dagger is yours.")
    assert bench.agrees("Free for you today!")
    assert not bench.agrees("Nothing is free here, traveller.")
    assert not bench.agrees("The king? I don't take orders from stories.")


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_demo_script_completes_the_quest_with_the_model_voice(model_voice, seed):
    from game.village_skins import dress_villagers
    from engine.world import new_game
    bench = _bench()
    dressing = dress_villagers(new_game(seed))
    assert dressing, "the shipped skins could not be set up"
    lines = []
    done, state = bench.run_demo(model_voice, seed, dressing, out=lines.append)
    q = state.quest
    assert done, f"stalled at step {q.step + 1}/{len(q.steps)}:\n" + "\n".join(lines[-30:])
