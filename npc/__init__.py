"""The language layer: turns a ``DialogueRequest`` into a ``DialogueProposal``.

Imports engine types only; ``game`` wires a responder into the session.
"""
