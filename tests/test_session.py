"""The game thread never waits for a voice; replies stream, commit through step, and can be cancelled."""

import threading

from engine.commands import EndTalk, NpcSaid
from engine.dialogue import DialogueProposal
from engine.world import new_game
from game.session import GameSession
from npc.scripted import ScriptedResponder

from tests.conftest import place_player_near


class GatedVoice:
    """Streams two pieces, then blocks until the test lets it answer."""

    name = "gated"

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.cancelled = False

    def respond(self, request, feedback=None, on_text=None, cancel=None):
        if on_text:
            on_text("Well")
            on_text("Well, well")
        self.started.set()
        while not self.gate.wait(0.01):
            if cancel is not None and cancel.is_set():
                self.cancelled = True
                raise RuntimeError("cancelled")
        return DialogueProposal(text="Well, well. Welcome, traveller.")


def test_ticks_go_on_while_the_voice_thinks():
    voice = GatedVoice()
    session = GameSession(place_player_near(new_game(1), "maren"), voice)
    try:
        session.talk("maren", "Hello!")
        session.tick()
        assert voice.started.wait(5)
        t0 = session.state.tick
        for _ in range(200):
            session.tick()  # would hang here if the game thread waited for the voice
        assert session.state.tick == t0 + 200
        assert session.pending is not None and session.pending.partial == "Well, well"
        voice.gate.set()
        said = []
        for _ in range(2000):
            said += [e for e in session.tick() if isinstance(e, NpcSaid)]
            if said:
                break
            threading.Event().wait(0.001)
        assert said and said[0].text.startswith("Well, well")
        assert session.completed[-1].attempts == 1 and not session.completed[-1].fallback
    finally:
        session.close()


def test_walking_away_cancels_the_reply():
    voice = GatedVoice()
    session = GameSession(place_player_near(new_game(1), "tobin"), voice)
    try:
        session.talk("tobin", "Hi")
        session.tick()
        assert voice.started.wait(5)
        session.queue(EndTalk())
        session.tick()
        assert session.pending is None
        for _ in range(100):
            if voice.cancelled:
                break
            threading.Event().wait(0.01)
        assert voice.cancelled
        voice.gate.set()
        for _ in range(50):
            assert not any(isinstance(e, NpcSaid) for e in session.tick())
    finally:
        session.close()


def test_a_broken_voice_gives_the_fallback_line():
    class Broken:
        name = "broken"

        def respond(self, *a, **k):
            raise ValueError("boom")

    session = GameSession(place_player_near(new_game(1), "bram"), Broken())
    try:
        session.talk("bram", "Hello")
        for _ in range(500):
            session.tick()
            if session.completed:
                break
            threading.Event().wait(0.002)
        turn = session.completed[-1]
        assert turn.fallback and session.responder_errors
        assert session.state.npc("bram").memory[-1].text == turn.reply.text
    finally:
        session.close()


def test_voice_can_be_swapped_mid_game():
    session = GameSession(place_player_near(new_game(1), "maren"), GatedVoice())
    try:
        session.set_responder(ScriptedResponder())
        assert session.voice_label == "scripted lines"
        session.talk("maren", "Can I help with anything?")
        for _ in range(500):
            session.tick()
            if session.completed:
                break
            threading.Event().wait(0.002)
        assert session.state.quest.started  # the scripted Maren asks for help
    finally:
        session.close()
