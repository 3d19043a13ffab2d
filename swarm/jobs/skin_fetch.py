"""A worker fetching the skin a shard names: the bundle torrent from its magnet link, over the
worker's own swarm node, from the peers the assignment names (the requester seeds it) and any
the node finds; then checked and installed by what the game hands in.

swarm cannot read a skin bundle (that is npc's), so the game gives the fetcher two callables:
``verify`` (signature, every file's hash, the skin id, and that the skin is made for the model the
worker serves) runs on the complete download before it leaves its partial directory; ``install``
puts the verified bundle in the skin store. A fetch that fails at any step leaves nothing
installed and raises ``ContentError`` naming what failed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from swarm.content import ContentError, ContentRef, Verifier, parse_magnet

if TYPE_CHECKING:  # libtorrent loads only once a node is started
    from swarm.torrent import SwarmNode

#: How long one skin fetch may take before the shard is given back.
DEFAULT_FETCH_SECONDS = 120.0


@dataclass
class SkinFetcher:
    """``node`` returns the worker's running swarm node (started on first use by the caller,
    who also closes it); ``dest``, a directory of the fetcher's own, is where bundles download
    before they are installed."""

    node: Callable[[], SwarmNode]
    dest: Path
    verify: Verifier
    install: Callable[[Path], str]
    max_bytes: int
    timeout: float = DEFAULT_FETCH_SECONDS

    def fetch(self, skin: str, magnet: str, peers: list[str]) -> None:
        """Download, verify and install ``skin`` from ``magnet``; raises ContentError."""
        want = ContentRef("skin", skin)
        if parse_magnet(magnet).ref != want:
            raise ContentError(f"the magnet link is not the torrent of skin {skin[:12]}")
        # A bundle left here by a worker stopped between download and install is redone: this
        # directory is the fetcher's own, and the fetch refuses to overwrite.
        shutil.rmtree(self.dest / want.torrent_name, ignore_errors=True)
        result = self.node().fetch(magnet, self.dest, verifiers={"skin": self.verify},
                                   max_bytes={"skin": self.max_bytes}, peers=list(peers),
                                   timeout=self.timeout)
        try:
            installed = self.install(result.path)
        except ContentError:
            raise
        except Exception as e:  # the store's own refusal, in the game's terms
            raise ContentError(f"the skin store refused the bundle: {e}") from None
        finally:
            shutil.rmtree(result.path, ignore_errors=True)
        if installed != skin:  # verified against its torrent's name already; cannot differ
            raise ContentError(f"the store installed {installed[:12]}, not {skin[:12]}")
