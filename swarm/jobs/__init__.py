"""The compute market's jobs: batch inference requested by one client and served by others.

``backend`` is the contract between a worker and whatever runs the model (game hands swarm an
object that meets it; swarm never imports npc). ``receipt`` is the signed record of one accepted
shard that the credits ledger settles.
"""
