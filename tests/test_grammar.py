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

