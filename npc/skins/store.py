"""Installed skins: ``<hearth home>/skins/<skin id>/``, one verified bundle per directory.

A bundle enters the store only after it verifies, through a temp directory inside the store
that is verified again and renamed into place, so a directory named by a skin id always holds
that complete skin. Lineage follows parent ids through installed skins; the royalty split says
who is owed what share of a payment for using a skin.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from common.files import atomic_copy, fsync_dir
from common.paths import data_dir
from npc.skins.bundle import VerifiedSkin, read_signed, verify_bundle
from npc.skins.manifest import MANIFEST_FILE, SIGNATURE_FILE, SkinError, SkinManifest

_SKIN_ID = re.compile(r"^[0-9a-f]{64}$")
#: Shortest prefix accepted in place of a full skin id.
MIN_PREFIX = 4
#: Longest remix chain followed (a real chain cannot loop, but a damaged store must not hang us).
MAX_LINEAGE = 64


@dataclass(frozen=True)
class InstalledSkin:
    skin_id: str
    manifest: SkinManifest
    path: Path

    @property
    def size(self) -> int:
        return sum(f.size for f in self.manifest.files)


def is_skin_id(text: str) -> bool:
    return bool(_SKIN_ID.match(text))


class SkinStore:
    def __init__(self, root: Path | None = None):
        """``root`` is the Hearth data directory (default: ``common.paths.data_dir()``); skins
        live in ``skins/``."""
        self.root = (root or data_dir()) / "skins"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, skin_id: str) -> Path:
        if not is_skin_id(skin_id):
            raise SkinError(f"{skin_id!r} is not a skin id (64 hex digits)")
        return self.root / skin_id

    # -- installing -----------------------------------------------------------------------------

    def install(self, path: Path | str, *, base_model: str | None = None,
                base_gguf: Path | str | None = None) -> str:
        """Verify the bundle at ``path`` and copy it in; returns the skin id. Installing a skin
        that is already installed (and intact) changes nothing."""
        verified = verify_bundle(path, base_model=base_model, base_gguf=base_gguf)
        dest = self.root / verified.skin_id
        if dest.exists():
            try:
                verify_bundle(dest)
                return verified.skin_id
            except SkinError:
                self._discard(dest)  # damaged copy: replace it with the good one
        tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=self.root))
        try:
            names = [MANIFEST_FILE, SIGNATURE_FILE] + [f.path for f in verified.manifest.files]
            for name in names:
                atomic_copy(verified.path / name, tmp / name)  # fsyncs the file and ``tmp``
            # Check the copy, not the source: the source may have changed since it was verified.
            again = verify_bundle(tmp, base_model=base_model, base_gguf=base_gguf)
            if again.skin_id != verified.skin_id:
                raise SkinError(f"{path}: the bundle changed while it was being installed")
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():  # else another process installed it meanwhile
                    raise
            fsync_dir(self.root)
            return verified.skin_id
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, path: Path) -> None:
        aside = Path(tempfile.mkdtemp(prefix=".discard-", dir=self.root))
        os.rename(path, aside / "old")
        fsync_dir(self.root)  # a removed skin stays removed after a crash
        shutil.rmtree(aside, ignore_errors=True)

    # -- finding --------------------------------------------------------------------------------

    def _read(self, skin_id: str) -> InstalledSkin:
        """The installed skin's manifest, its signature checked (its files are not hashed)."""
        path = self.path(skin_id)
        signed = read_signed(path)
        if signed.skin_id != skin_id:
            raise SkinError(f"{path}: holds skin {signed.skin_id}, not {skin_id} (damaged store)")
        return InstalledSkin(skin_id=skin_id, manifest=signed.manifest, path=path)

    def list(self) -> list[InstalledSkin]:
        out = []
        for d in self.root.iterdir():
            if not is_skin_id(d.name) or not d.is_dir():
                continue
            try:
                out.append(self._read(d.name))
            except SkinError:
                continue  # damaged; `hearth skin verify` names the problem
        return sorted(out, key=lambda s: (s.manifest.name.lower(), s.skin_id))

    def is_installed(self, skin_id: str) -> bool:
        return is_skin_id(skin_id) and (self.root / skin_id / MANIFEST_FILE).is_file()

    def get(self, ref: str) -> InstalledSkin:
        """An installed skin by full id or unique prefix (at least 4 hex digits)."""
        ref = ref.strip().lower()
        if is_skin_id(ref) and (self.root / ref).is_dir():
            return self._read(ref)
        if len(ref) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", ref):
            raise SkinError(f"{ref!r} is not a skin id or a prefix of one "
                            f"(at least {MIN_PREFIX} hex digits)")
        matches = sorted(d.name for d in self.root.iterdir()
                         if is_skin_id(d.name) and d.name.startswith(ref))
        if not matches:
            raise SkinError(f"no installed skin {ref!r} (see `hearth skin list`)")
        if len(matches) > 1:
            raise SkinError(f"skin prefix {ref!r} is ambiguous ({len(matches)} skins match)")
        return self._read(matches[0])

    def verify(self, ref: str, base_model: str | None = None,
               base_gguf: Path | str | None = None) -> VerifiedSkin:
        """Re-check an installed skin completely (every hash, the signature, the adapter)."""
        skin = self.get(ref)
        verified = verify_bundle(skin.path, base_model=base_model, base_gguf=base_gguf)
        if verified.skin_id != skin.skin_id:
            raise SkinError(f"{skin.path}: holds skin {verified.skin_id}, not {skin.skin_id}")
        return verified

    # -- lineage and royalties ------------------------------------------------------------------

    def chain(self, skin_id: str) -> tuple[list[InstalledSkin], str | None]:
        """The skin, its parent, and so on back to an original, as far as they are installed.
        Returns the chain and the id of the first parent that is not installed (or None)."""
        chain: list[InstalledSkin] = []
        seen: set[str] = set()
        current: str | None = self.get(skin_id).skin_id
        while current is not None:
            if current in seen:
                raise SkinError(f"skin {current} appears twice in its own lineage (a cycle); "
                                f"refusing it")
            if len(chain) >= MAX_LINEAGE:
                raise SkinError(f"the lineage of {skin_id} is longer than {MAX_LINEAGE} skins")
            seen.add(current)
            if not self.is_installed(current):
                return chain, current
            skin = self._read(current)
            chain.append(skin)
            current = skin.manifest.parent
        return chain, None

    def lineage(self, skin_id: str) -> list[SkinManifest]:
        """Manifests from the skin back to its original. A parent that is not installed is an
        error naming it (the lineage, and so the royalty split, would be incomplete)."""
        chain, missing = self.chain(skin_id)
        if missing is not None:
            child = chain[-1]
            raise SkinError(f"skin {child.skin_id[:16]}… ({child.manifest.name}) remixes "
                            f"{missing}, which is not installed; install it to complete the "
                            f"lineage")
        return [s.manifest for s in chain]

    def royalty_split(self, skin_id: str) -> list[tuple[str, str, Fraction]]:
        """Who gets what share of a payment for using this skin: [(creator public key hex, skin
        id, share)], from the skin back to its original. Each skin keeps (1 - royalty) of what
        reaches it and passes the rest to its parent; the original keeps everything that reaches
        it. Shares are exact fractions and sum to exactly 1."""
        chain, missing = self.chain(skin_id)
        if missing is not None:
            self.lineage(skin_id)  # raises, naming the missing parent
        split = []
        remaining = Fraction(1)
        for i, skin in enumerate(chain):
            m = skin.manifest
            if i == len(chain) - 1:
                share = remaining
            else:
                # Through str, so a royalty of 0.1 is exactly one tenth, not its binary neighbour.
                royalty = Fraction(repr(m.royalty))
                share = remaining * (1 - royalty)
                remaining -= share
            split.append((m.creator, skin.skin_id, share))
        return split

