"""The swarm node behind the game window: started with the window, it seeds the local model and
skin stores and keeps the creator's skin index on the DHT in the background."""

from __future__ import annotations

import threading

from game.swarm_box import SwarmBox
from game.swarm_bridge import RETRY_SECONDS, local_content, republish_own_skins, start_node
from npc.skins.manifest import SkinError
from swarm.content import ContentError
from swarm.settings import SwarmSettings


class GameSwarm:
    """``start`` never raises: a node that cannot start leaves the game running without it, and
    ``status`` (what the swarm box shows) says why."""

    def __init__(self, settings: SwarmSettings):
        self.settings = settings
        self.node = None
        self._note: str | None = None
        self._error: str | None = None
        self._closed = threading.Event()

    def start(self) -> GameSwarm:
        if not self.settings.seeding:
            self._note = "seeding is switched off (swarm.toml)"
            return self
        try:
            self.node = start_node(self.settings)
        except ContentError as e:
            self._error = str(e)
            return self
        threading.Thread(target=self._seed_local, name="hearth-seed-local", daemon=True).start()
        return self

    def _seed_local(self) -> None:
        node = self.node
        failed: list[str] = []
        try:
            contents = local_content()
        except (ContentError, SkinError, OSError) as e:
            self._note = f"could not list the stores: {e}"
            return
        self._note = f"preparing {len(contents)} items"
        for c in contents:
            if self._closed.is_set() or not node.running:
                return
            try:
                node.seed(c)
            except (ContentError, OSError) as e:
                failed.append(f"{c.ref.short}: {e}")
        self._note = f"could not seed {len(failed)} items" if failed else None
        delay = 0.0
        while not self._closed.wait(delay) and node.running:
            try:
                delay = republish_own_skins(node)
            except (ContentError, SkinError, OSError):
                delay = RETRY_SECONDS

    def status(self) -> SwarmBox:
        if self._error:
            return SwarmBox(note=self._error, failed=True)
        if self.node is None:
            return SwarmBox(note=self._note or "not started")
        return SwarmBox(self.node.status(), self._note)

    def close(self) -> None:
        self._closed.set()
        if self.node is not None:
            self.node.close()
            self.node = None
