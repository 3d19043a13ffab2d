"""What goes wrong in the BitTorrent layer, beyond content that is not what it claims."""

from __future__ import annotations

from swarm.content import ContentError


class SwarmError(ContentError):
    """The node could not do what was asked (not running, timed out, closed meanwhile)."""


class FetchInterrupted(SwarmError):
    """The node closed during a fetch; what was downloaded is kept for the next attempt."""


class FetchStalled(SwarmError):
    """A fetch timed out or stopped making progress; what was downloaded is kept."""
