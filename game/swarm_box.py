"""What the side panel's swarm box shows: the node's status and what the game says about it.

Free of pygame, so the window's background node can report without loading the display.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from game.window_worker import JobsStatus
    from swarm.torrent import SwarmStatus


@dataclass(frozen=True)
class SwarmBox:
    #: The node's status; None when no node runs (switched off, or it could not start).
    node: SwarmStatus | None = None
    #: Why no node runs, or what the game is busy with (listing the stores, seeding them).
    note: str | None = None
    #: The node could not start; ``note`` says why.
    failed: bool = False
    #: Serving other people's jobs from the window; None when the window does not serve.
    jobs: JobsStatus | None = None
