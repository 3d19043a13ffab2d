"""Hearth's OpenAI-compatible endpoint: an ASGI app that takes OpenAI chat and text completion
requests and runs each where the routing policy says (the local model, the swarm or an upstream
OpenAI-compatible API). swarm never imports npc: the local model arrives as a ``LocalModel``
(``swarm.router.local``) the game builds."""
