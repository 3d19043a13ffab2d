"""The per-turn reply grammar, built from the live state.

A reply is one JSON object::

    {"action": "<one of the actions legal right now>", "say": "<spoken line>"}

The action comes first so the line is spoken knowing what the NPC does. It is a literal chosen
from the ``DialogueRequest``'s legal actions, so item ids and prices can only be ones that exist
right now; "none" is allowed unless the engine requires the action (the player asked for it). The
line starts with the engine's fact word for word (a ``lead``: forced bytes, so the model cannot
get a price or a place wrong) and may add one sentence of its own. It is bounded (bytes and
sentences) and may not contain quotes, backslashes or control characters. ``ReplyGrammar`` checks
bytes as they are generated (our sampler asks it about one candidate token at a time).
"""

from __future__ import annotations

from engine.commands import GiveItem, NpcAction, SellItem, StartQuest

PREFIX = '{"action": "'
_MID = '", "say": "'
_END = b'"}'
_BANNED = set(range(0x20)) | {0x22, 0x5C, 0x7F}  # control, '"', '\\', DEL
_TERMINATORS = (b".", b"!", b"?")


def action_label(action: NpcAction | None) -> str:
    match action:
        case SellItem(item=item, price=price, qty=1):
            return f"sell {item} {price}"
        case SellItem(item=item, price=price, qty=qty):
            return f"sell {qty} {item} {price}"
        case GiveItem(item=item):
            return f"give {item}"
        case StartQuest(quest=q):
            return f"start_quest {q}"
    return "none"


def _sentences(text: bytes) -> int:
    return sum(text.count(c) for c in _TERMINATORS)


class ReplyGrammar:
    """Byte-level acceptor for the reply after ``PREFIX`` (which ends the prompt)."""

    def __init__(self, actions: list[NpcAction], max_chars: int, max_sentences: int = 2,
                 lead: str = "", required: bool = False):
        """``lead``: the text the line must start with; the line may then add ``max_sentences``
        sentences when there is no lead and one more sentence after a lead. ``required``: one of
        ``actions`` must be taken ("none" is not offered)."""
        self.actions = {} if required and actions else {"none": None}
        self.actions.update({action_label(a): a for a in actions})
        self.heads = [(label + _MID).encode() for label in self.actions]
        self.lead = lead.encode()
        self.max_bytes = max(max_chars, len(self.lead))  # bytes: a conservative bound on characters
        self.max_sentences = _sentences(self.lead) + 1 if lead else max_sentences
        self.reset()

    def reset(self) -> None:
        self.head = bytearray()  # the action label and the literal up to the line
        self.text = bytearray()
        self.tail = bytearray()  # after the line's closing quote
        self.phase = 0  # 0: action, 1: line, 2: closing

    def _full(self, text: bytes | bytearray) -> bool:
        """The line has reached its bound: its byte budget, or its last allowed sentence ended."""
        if len(text) >= self.max_bytes:
            return True
        t = bytes(text)
        return (t[-1:] in _TERMINATORS and not t.endswith(b"..")
                and _sentences(t) >= self.max_sentences)

    def _feed(self, piece: bytes, head: bytearray, text: bytearray, tail: bytearray, phase: int):
        for b in piece:
            if phase == 0:
                head.append(b)
                h = bytes(head)
                if not any(x.startswith(h) for x in self.heads):
                    return None
                if h in self.heads:
                    phase = 1
            elif phase == 1:
                if len(text) < len(self.lead):
                    if b != self.lead[len(text)]:
                        return None
                    text.append(b)
                elif b == 0x22:
                    if not bytes(text).strip():
                        return None  # an empty line says nothing
                    phase = 2
                    tail.append(b)
                elif b in _BANNED or self._full(text):
                    return None
                else:
                    text.append(b)
            else:
                tail.append(b)
                if not _END.startswith(bytes(tail)):
                    return None
        return phase

    def accepts(self, piece: bytes) -> bool:
        """Would appending ``piece`` keep the output a prefix of some valid reply?"""
        return self._feed(piece, bytearray(self.head), bytearray(self.text), bytearray(self.tail),
                          self.phase) is not None

    def push(self, piece: bytes) -> None:
        phase = self._feed(piece, self.head, self.text, self.tail, self.phase)
        if phase is None:
            raise ValueError("piece breaks the reply grammar")
        self.phase = phase

    @property
    def done(self) -> bool:
        return self.phase == 2 and bytes(self.tail) == _END

    def forced(self) -> bytes:
        """Bytes every valid continuation starts with (empty when the model has a choice)."""
        if self.phase == 0:
            h = bytes(self.head)
            rest = [x[len(h):] for x in self.heads if x.startswith(h)]
            common = rest[0]
            for r in rest[1:]:
                k = 0
                while k < min(len(common), len(r)) and common[k] == r[k]:
                    k += 1
                common = common[:k]
            return common
        if self.phase == 1:
            if len(self.text) < len(self.lead):
                return self.lead[len(self.text):]
            return b'"}' if self._full(self.text) else b""
        return _END[len(self.tail):]

    @property
    def line(self) -> str:
        return bytes(self.text).decode("utf-8", "ignore")

    def result(self) -> tuple[str, NpcAction | None]:
        label = bytes(self.head)[: -len(_MID)].decode() if self.phase else "none"
        return bytes(self.text).decode("utf-8", "replace").strip(), self.actions.get(label)

