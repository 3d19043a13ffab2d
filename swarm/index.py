"""A creator's skin index: a signed BEP44 mutable DHT item keyed by the creator's ed25519 key.

The item lives at target SHA-1(public key + salt) and lists the creator's skins (name, skin id,
v1 and v2 info-hashes); each magnet link is rebuilt from those. Its value is a msgpack array,
compact enough that a handful of skins fit BEP44's 1000-byte limit. The DHT nodes check the
signature before storing an item and libtorrent checks it again on the way back; the reader
checks it a third time here, against the key it asked for, before trusting a byte.

libtorrent signs with the 64-byte expanded ed25519 secret (the clamped SHA-512 of the seed);
PyNaCl keeps the 32-byte seed, so ``expanded_secret`` converts.
"""

from __future__ import annotations

import hashlib

import libtorrent as lt
import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from swarm.content import ContentError, ContentRef

#: The index's salt: its name, and its format version.
INDEX_SALT = b"hearth/skins/1"
#: BEP44: a mutable item's bencoded value is at most 1000 bytes.
MAX_VALUE_BYTES = 1000
NAME_CHARS = 40


class SkinIndexError(ContentError):
    pass


class IndexEntry(msgspec.Struct, array_like=True, forbid_unknown_fields=False):
    name: str
    skin: bytes
    btih: bytes
    btmh: bytes

    @property
    def skin_id(self) -> str:
        return self.skin.hex()

    @property
    def magnet(self) -> str:
        name = ContentRef("skin", self.skin_id).torrent_name
        return (f"magnet:?xt=urn:btih:{self.btih.hex()}&xt=urn:btmh:1220{self.btmh.hex()}"
                f"&dn={name}")


class SkinIndex(msgspec.Struct, array_like=True, forbid_unknown_fields=False):
    version: int = 1
    entries: list[IndexEntry] = []


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(SkinIndex)


class SignedItem(msgspec.Struct, frozen=True):
    """A mutable item as read from the DHT: the raw value bytes (the payload of the bencoded
    string libtorrent stores), its sequence number and signature."""

    public_key: bytes
    salt: bytes
    seq: int
    value: bytes
    signature: bytes


def entry_for(skin_id: str, name: str, magnet: str) -> IndexEntry:
    """An index entry from a skin's id, name and magnet link (which must carry both hashes)."""
    atp = lt.parse_magnet_uri(magnet)
    ih = atp.info_hashes
    if not (ih.has_v1() and ih.has_v2()):
        raise SkinIndexError("a skin's magnet link must carry both its v1 and v2 info-hashes")
    return IndexEntry(name=name[:NAME_CHARS], skin=bytes.fromhex(skin_id),
                      btih=bytes.fromhex(str(ih.v1)), btmh=bytes.fromhex(str(ih.v2)))


def encode_index(entries: list[IndexEntry]) -> tuple[bytes, list[IndexEntry]]:
    """The value for as many entries as fit (in the order given) and the entries left out."""
    kept = list(entries)
    while True:
        value = _enc.encode(SkinIndex(entries=kept))
        if len(lt.bencode(value)) <= MAX_VALUE_BYTES:
            return value, entries[len(kept):]
        kept.pop()


def decode_index(value: bytes) -> SkinIndex:
    try:
        index = _dec.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SkinIndexError(f"the skin index is not readable ({e})") from None
    for e in index.entries:
        if len(e.skin) != 32 or len(e.btih) != 20 or len(e.btmh) != 32:
            raise SkinIndexError("the skin index holds a malformed entry")
    return index


def signed_buffer(salt: bytes, seq: int, value: bytes) -> bytes:
    """What BEP44 signs: ``4:salt<len>:<salt>3:seqi<seq>e1:v<bencoded value>``."""
    out = b""
    if salt:
        out += b"4:salt" + str(len(salt)).encode() + b":" + salt
    return out + b"3:seqi" + str(seq).encode() + b"e1:v" + lt.bencode(value)


def verify_item(item: SignedItem, public_key: bytes, salt: bytes = INDEX_SALT) -> None:
    """Check that ``item`` is what the owner of ``public_key`` signed under ``salt``."""
    if item.public_key != public_key:
        raise SkinIndexError(f"the item is signed by key {item.public_key.hex()[:16]}…, not the "
                          f"creator {public_key.hex()[:16]}…")
    if item.salt != salt:
        raise SkinIndexError("the item's salt is not the skin index's")
    try:
        VerifyKey(public_key).verify(signed_buffer(salt, item.seq, item.value), item.signature)
    except (BadSignatureError, ValueError):
        raise SkinIndexError(f"bad signature on the skin index of {public_key.hex()[:16]}… "
                          f"(seq {item.seq}): it was changed after signing or signed by "
                          f"another key") from None


def expanded_secret(seed: bytes) -> bytes:
    """libtorrent's 64-byte ed25519 secret key for a 32-byte seed."""
    if len(seed) != 32:
        raise SkinIndexError("an ed25519 seed is 32 bytes")
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 63
    h[31] |= 64
    return bytes(h)
