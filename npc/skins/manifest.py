"""The skin manifest: what a skin is, who made it, which base model it fits, and its files.

The manifest is signed as bytes: ``manifest.json`` holds exactly the bytes the creator signed
(msgspec JSON with sorted keys when Hearth writes it), ``manifest.sig`` the raw 64-byte ed25519
signature, and the skin id is the BLAKE3 hash of the two together. Verification never
re-encodes, so a manifest written by a later Hearth with extra fields keeps its id and signature.
"""

from __future__ import annotations

from typing import Annotated, Literal

import blake3
import msgspec

#: The manifest format this Hearth reads and writes.
MANIFEST_VERSION = 1
#: A manifest is a few hundred bytes; anything much larger is not one.
MAX_MANIFEST_BYTES = 64 * 1024
SIGNATURE_BYTES = 64

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
ADAPTER_FILE = "adapter.gguf"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"

Hex64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Role = Literal["adapter_gguf", "peft_weights", "peft_config"]


class SkinError(Exception):
    """A skin cannot be made, verified, installed or worn; the message names the problem and the
    file."""


class TrainingSummary(msgspec.Struct, kw_only=True):
    """How the adapter was trained (informative; nothing is checked against it)."""

    steps: int = 0
    rank: int = 0
    alpha: float = 0.0
    target_modules: list[str] = []
    examples: int = 0
    final_loss: float | None = None
    seconds: float = 0.0


class FileEntry(msgspec.Struct, kw_only=True):
    path: str
    blake3: Hex64
    size: Annotated[int, msgspec.Meta(ge=0)]
    role: Role


class SkinManifest(msgspec.Struct, kw_only=True):
    version: int = MANIFEST_VERSION
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    #: The creator's ed25519 public key (hex); the signature must verify against it.
    creator: Hex64
    #: BLAKE3 of the base model GGUF the adapter was trained on.
    base_model: Hex64
    #: The skin this one remixes, or None for an original.
    parent: Hex64 | None = None
    #: Share of every payment for this skin that flows on to the parent chain.
    royalty: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    license: str = "CC-BY-4.0"
    #: Unix seconds.
    created: int
    training: TrainingSummary = msgspec.field(default_factory=TrainingSummary)
    files: list[FileEntry]

    def file(self, role: str) -> FileEntry | None:
        for f in self.files:
            if f.role == role:
                return f
        return None


class _VersionOnly(msgspec.Struct):
    version: int = MANIFEST_VERSION


_encoder = msgspec.json.Encoder(order="sorted")
_version_decoder = msgspec.json.Decoder(_VersionOnly)
_manifest_decoder = msgspec.json.Decoder(SkinManifest)


def canonical_bytes(manifest: SkinManifest) -> bytes:
    """The bytes a creator signs: msgspec JSON, keys sorted at every level."""
    return _encoder.encode(manifest)


def skin_id(manifest_bytes: bytes, signature: bytes) -> str:
    return blake3.blake3(manifest_bytes + signature).hexdigest()


def decode_manifest(data: bytes, where: str = MANIFEST_FILE) -> SkinManifest:
    """Parse manifest bytes; an unknown format version is refused before anything else is read."""
    try:
        version = _version_decoder.decode(data).version
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SkinError(f"{where}: not a skin manifest ({e})") from None
    if version > MANIFEST_VERSION:
        raise SkinError(f"{where}: manifest version {version} is newer than this Hearth "
                        f"understands (up to {MANIFEST_VERSION}); update Hearth to use this skin")
    if version < 1:
        raise SkinError(f"{where}: invalid manifest version {version}")
    try:
        return _manifest_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SkinError(f"{where}: invalid manifest ({e})") from None
