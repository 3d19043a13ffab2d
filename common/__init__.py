"""Small helpers every layer shares: where Hearth keeps its files, and how it writes them.

The bottom of the import graph: ``common`` imports nothing from engine, npc, swarm or game, and
any of them may import it.
"""
