"""What the window calls a skin: its name and its creator's short key, read once per skin from the
installed skin store, instead of its 64-hex id."""

from __future__ import annotations

from pathlib import Path

from npc.skins.manifest import SkinError

#: Hex digits of a creator's key shown after "by" (as in `hearth skin list`).
SHORT_KEY = 16


def skin_label(name: str, creator: str) -> str:
    return f"{name}, by {creator[:SHORT_KEY]}"


class SkinNames:
    """Labels for skin ids, looked up in the skin store of ``root`` (default: the data directory)
    the first time each id is asked for, then remembered."""

    def __init__(self, root: Path | None = None):
        self._root = root
        self._labels: dict[str, str] = {}

    def label(self, skin_id: str) -> str:
        if skin_id not in self._labels:
            self._labels[skin_id] = self._look_up(skin_id)
        return self._labels[skin_id]

    def _look_up(self, skin_id: str) -> str:
        from npc.skins.store import SkinStore
        try:
            m = SkinStore(self._root).get(skin_id).manifest
        except (SkinError, OSError):
            return f"skin {skin_id[:SHORT_KEY]}… (not installed)"
        return skin_label(m.name, m.creator)
