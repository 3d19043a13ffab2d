"""The reply grammar: what it lets through and what it stops, byte by byte."""

import pytest

from engine.commands import GiveItem, SellItem, StartQuest
from npc.grammar import ReplyGrammar

ACTIONS = [SellItem(item="rope", price=6), GiveItem(item="bell_clapper"), StartQuest(quest="silent_bell")]


def feed(g, *pieces):
    for p in pieces:
        if not g.accepts(p):
            return False
        g.push(p)
    return True


def test_a_whole_reply_and_its_result():
    g = ReplyGrammar(ACTIONS, 80)
    assert g.forced() == b""  # several actions: the model chooses
    assert feed(g, b"sell", b" rope 6")
    assert g.forced() == b'", "say": "'
    assert feed(g, b'", "say": "', b"Six gold", b", friend.", b'"}')
    assert g.done and g.result() == ("Six gold, friend.", SellItem(item="rope", price=6))


@pytest.mark.parametrize("pieces", [
    [b"sell rope 5"],                      # a price that is not the catalogue's
    [b"sell dagger 25"],                   # an item that is not on offer
    [b"give iron_ingot"],                  # a quest item that is not due
    [b'none", "say": "', b'"'],            # an empty line
    [b'none", "say": "', b"a\\b"],         # a backslash
    [b'none", "say": "', b"line\nbreak"],  # a control character
    [b'none", "say": "Hi."', b"}x"],       # anything after the object
])
def test_illegal_bytes_are_refused(pieces):
    g = ReplyGrammar(ACTIONS, 80)
    assert not feed(g, *pieces)


def test_the_line_is_bounded():
    g = ReplyGrammar([], 20)
    assert g.forced() == b'none", "say": "'  # only "none" is legal: forced, not sampled
    feed(g, g.forced())
    assert feed(g, b"x" * 20)
    assert not g.accepts(b"y") and g.forced() == b'"}'
    g = ReplyGrammar([], 200, max_sentences=2)
    feed(g, g.forced(), b"One. Two!")
    assert g.forced() == b'"}' and not g.accepts(b" Three")



def test_a_required_action_and_the_fact_are_forced():
    """When the player asked for something the engine does, "none" is not offered; the engine's
    fact opens the line byte for byte, and the model may add one sentence of its own."""
    sale = SellItem(item="rope", price=6)
    fact = "One coil of rope, 6 gold."
    g = ReplyGrammar([sale], 80, lead=fact, required=True)
    assert g.forced() == b'sell rope 6", "say": "'
    assert not g.accepts(b"none")
    feed(g, g.forced())
    assert g.forced() == fact.encode()
    assert not g.accepts(b"One coil of rope, 5")  # a wrong price cannot even be started
    feed(g, g.forced())
    assert g.forced() == b""  # the model's turn
    assert feed(g, b" Here you go", b"!")
    assert g.forced() == b'"}' and not g.accepts(b" More.")
    feed(g, g.forced())
    assert g.done and g.result() == (f"{fact} Here you go!", sale)


def test_a_fact_may_end_the_line_and_none_stays_free():
    g = ReplyGrammar([], 80, lead="A lantern is 10 gold.")
    assert g.forced() == b'none", "say": "'  # the head first
    feed(g, g.forced())
    assert g.forced() == b"A lantern is 10 gold."
    feed(g, g.forced())
    assert feed(g, b'"}') and g.done and g.result() == ("A lantern is 10 gold.", None)


def test_a_long_fact_is_never_cut():
    fact = "x" * 50 + "."
    g = ReplyGrammar([], 20, lead=fact)
    feed(g, g.forced())
    assert g.forced() == fact.encode()
    feed(g, g.forced())
    assert g.forced() == b'"}'
