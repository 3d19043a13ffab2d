"""Serving other people's batch inference: a continuous-batching engine over llama.cpp, a seeded
sampler a verifier can replay, and teacher-forced re-scoring of claimed completions.

npc never imports swarm. The engine takes work items as any objects with the attributes of
``swarm.jobs.backend.WorkItem`` (``custom_id``, ``messages`` of objects with ``role`` and
``content``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``) and claims with those of
``Completion``; it returns this package's own ``Completion``, ``Verdict`` and ``Released``, which
carry the same field names, so the caller converts them field for field.
"""

from npc.serving.engine import Engine, EngineOptions
from npc.serving.scheduler import Finished, GenRequest, Handle, Scheduler, TokenEvent
from npc.serving.types import Completion, Released, ServingError, Verdict

__all__ = ["Completion", "Engine", "EngineOptions", "Finished", "GenRequest", "Handle", "Released",
           "Scheduler", "ServingError", "TokenEvent", "Verdict"]
