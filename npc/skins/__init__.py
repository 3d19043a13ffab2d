"""Skins: LoRA adapters that give an NPC a personality, as signed, content-addressed bundles.

``manifest`` (the format), ``identity`` (the creator's signing key), ``bundle`` (making and
verifying bundles), ``store`` (installed skins, lineage and royalties); training and conversion
to GGUF live beside them.
"""

from npc.skins.manifest import FileEntry, SkinError, SkinManifest, TrainingSummary

__all__ = ["FileEntry", "SkinError", "SkinManifest", "TrainingSummary"]
