"""The reply grammar: what it lets through and what it stops, byte by byte."""

import pytest

from engine.commands import GiveItem, SellItem, StartQuest
from npc.grammar import PREFIX, ReplyGrammar, parse_reply, to_gbnf

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
    raw = PREFIX + 'sell rope 6", "say": "Six gold, friend."}'
    assert parse_reply(raw, ACTIONS) == ("Six gold, friend.", SellItem(item="rope", price=6))


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


def test_gbnf_is_valid_for_llama_cpp():
    import llama_cpp
    text = to_gbnf(ACTIONS, 120)
    assert '"\\"sell rope 6\\""' in text
    grammar = llama_cpp.LlamaGrammar.from_string(text, verbose=False)
    assert grammar is not None
