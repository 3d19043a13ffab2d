"""The interface every NPC voice implements (scripted lines now, the local model later)."""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from engine.dialogue import DialogueProposal, DialogueRequest

TextSink = Callable[[str], None]


class Responder(Protocol):
    name: str

    def respond(self, request: DialogueRequest, feedback: str | None = None,
                on_text: TextSink | None = None,
                cancel: threading.Event | None = None) -> DialogueProposal:
        """Return a proposal for this request. ``on_text`` receives the spoken line as it grows;
        ``cancel`` set means stop as soon as possible (the result is then discarded)."""
        ...
