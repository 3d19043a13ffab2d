"""The swarm's content layer on real libtorrent sessions, all on 127.0.0.1: seeding and fetching
models and skins as hybrid torrents found through a DHT of the test's own nodes, the BLAKE3
check after download, a seeder serving corrupt pieces, an interrupted fetch resuming, the
BEP44 skin index (and tampered copies of it), the command line and the game's swarm box.

No test contacts anything but 127.0.0.1: every node listens there, has no DHT router, no
UPnP/NAT-PMP/LSD, and bootstraps only off the other test nodes.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import libtorrent as lt
import pytest

from common.files import blake3_file
from swarm.content import Content, ContentError, ContentRef, make_torrent, parse_magnet
from swarm.index import (
    INDEX_SALT, SignedItem, SkinIndexError, decode_index, encode_index, entry_for, verify_item,
)
from swarm.settings import SettingsError, SwarmSettings, load_settings, parse_endpoint, parse_rate
from swarm.torrent import FetchInterrupted, SwarmNode, session_settings
from test_skins import base, ident, make_bundle  # noqa: F401  (fixtures and the bundle builder)
from tests.conftest import hearth, hearth_popen

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20


# ---- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def nodes(tmp_path):
    """Start loopback nodes (``start(name, **settings)``); all are closed at the end."""
    started = []

    def start(name, **kw):
        node = SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True, **kw),
                         tmp_path / f"node-{name}").start()
        started.append(node)
        return node
    yield start
    for n in started:
        n.close()


def fake_model(d: Path, size: int, seed: int = 0) -> Path:
    """Random bytes stored as a model is: ``<blake3>.gguf``."""
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "incoming"
    tmp.write_bytes(os.urandom(size) if seed == 0 else
                    hashlib.shake_256(seed.to_bytes(8, "big")).digest(size))
    digest = blake3_file(tmp)
    path = d / f"{digest}.gguf"
    tmp.rename(path)
    return path


def model_of(path: Path) -> Content:
    return Content(ContentRef("model", path.stem), path)


def wait_until(cond, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def mesh(*ns):
    """Each node learns every other as a DHT node (loopback: no router, no public network)."""
    for a in ns:
        others = [parse_endpoint(b.endpoint) for b in ns if b is not a]
        a.session.call(lambda ses: [ses.add_dht_node(n) for n in others])
    for a in ns:
        wait_until(lambda: a.dht_node_count() >= 1, 10, "the DHT to connect")


# ---- settings and naming -------------------------------------------------------------------------

def test_settings_load_toml_and_overrides(tmp_path):
    cfg = tmp_path / "swarm.toml"
    cfg.write_text('listen = "127.0.0.1:7000"\nbootstrap = ["127.0.0.1:7001"]\n'
                   'upload_limit = 1000\nseeding = false\n')
    s = load_settings(cfg, listen="127.0.0.1:0", download_limit=parse_rate("8M"))
    assert (s.listen, s.bootstrap) == ("127.0.0.1:0", ["127.0.0.1:7001"])
    assert (s.upload_limit, s.download_limit, s.seeding) == (1000, 8 * MB, False)
    with pytest.raises(SettingsError, match="HOST:PORT"):
        load_settings(cfg, bootstrap=["nowhere"])
    cfg.write_text("lisen = 'x'\n")
    with pytest.raises(SettingsError, match="lisen"):
        load_settings(cfg)
    # Nothing public, whatever the settings: no routers, no port mapping.
    pack = session_settings(SwarmSettings(bootstrap=["127.0.0.1:9"], lan_discovery=False))
    assert pack["dht_bootstrap_nodes"] == "" and not pack["enable_upnp"]
    assert not pack["enable_natpmp"] and not pack["enable_lsd"]


def test_torrent_names_carry_the_content_id(tmp_path):
    path = fake_model(tmp_path, 100_000)
    ti = lt.torrent_info(make_torrent(model_of(path)))
    assert ti.info_hashes().has_v1() and ti.info_hashes().has_v2()  # hybrid
    assert ti.name() == f"hearth-model-{path.stem}.gguf"
    assert path.stem in ti.comment()
    m = parse_magnet(lt.make_magnet_uri(ti))
    assert m.ref == ContentRef("model", path.stem)
    assert "urn:btih:" in m.uri and "urn:btmh:" in m.uri and "tr=" not in m.uri
    assert ContentRef.from_name(f"hearth-skin-{'a' * 64}") == ContentRef("skin", "a" * 64)
    assert ContentRef.from_name(f"hearth-skin-{'a' * 64}.gguf") is None
    assert ContentRef.from_name("ubuntu.iso") is None


# ---- the swarm -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_four_nodes_share_a_model_and_a_skin_found_through_the_dht(nodes, tmp_path, base, ident):
    from game.swarm_bridge import skin_content, verify_skin
    from npc.skins.bundle import verify_bundle

    model = fake_model(tmp_path / "store", 50 * MB)
    bundle, skin_id = make_bundle(tmp_path, base, ident)
    seeder = nodes("seeder")
    fetchers = [nodes(f"f{i}", bootstrap=[seeder.endpoint]) for i in range(3)]
    mesh(seeder, *fetchers)
    magnets = [seeder.seed(model_of(model)).magnet,
               seeder.seed(skin_content(skin_id, bundle)).magnet]
    results, errors = {}, []

    def fetch(i, node, magnet):
        try:  # no peers given: the DHT is the only way to find the seeder and each other
            results[i, magnet] = node.fetch(magnet, tmp_path / f"out{i}",
                                            verifiers={"skin": verify_skin}, timeout=90)
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=fetch, args=(i, n, m))
               for i, n in enumerate(fetchers) for m in magnets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 6
    for i in range(3):
        got = results[i, magnets[0]]
        assert got.path.name == f"hearth-model-{model.stem}.gguf"
        assert blake3_file(got.path) == model.stem and got.hash_failures == 0
        skin = results[i, magnets[1]]
        assert verify_bundle(skin.path).skin_id == skin_id
        assert not list((tmp_path / f"out{i}").glob(".hearth-partial-*"))
    up = seeder.torrent_stats(ContentRef("model", model.stem)).uploaded
    print(f"seeder uploaded {up / model.stat().st_size:.2f} copies of the model for 3 fetchers")


def corrupt_copy(src: Path, dst: Path, every: int = 16 * 1024) -> None:
    data = bytearray(src.read_bytes())
    for i in range(0, len(data), every):
        data[i] ^= 0xFF
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupt_pieces_are_caught_and_their_sender_banned(nodes, tmp_path):
    model = fake_model(tmp_path / "honest", 8 * MB)
    ref = ContentRef("model", model.stem)
    honest = nodes("honest", upload_limit=2 * MB)  # slow, so the fetcher asks the liar too
    seeded = honest.seed(model_of(model))
    # The liar has the same torrent and a damaged file, and resume data claiming every piece
    # (as a node whose disk went bad after it last checked): it serves without re-checking.
    liar_dir = tmp_path / "node-liar"
    bad = liar_dir / "store" / model.name
    corrupt_copy(model, bad)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info((tmp_path / "node-honest" / "torrents" /
                              f"{ref.torrent_name}.torrent").read_bytes())
    atp.have_pieces = [True] * atp.ti.num_pieces()
    atp.save_path = str(bad.parent)
    (liar_dir / "resume").mkdir(parents=True)
    (liar_dir / "resume" / f"{ref.torrent_name}.resume").write_bytes(lt.write_resume_data_buf(atp))
    liar = nodes("liar")
    assert liar.seed(Content(ref, bad)).magnet == seeded.magnet
    fetcher = nodes("fetcher")
    got = fetcher.fetch(seeded.magnet, tmp_path / "out", peers=[liar.endpoint, honest.endpoint],
                        timeout=60)
    assert got.path.read_bytes() == model.read_bytes()
    print(f"hash failures: {got.hash_failures}, banned: {got.banned}, liar {liar.endpoint}, "
          f"honest {honest.endpoint}, {got.seconds:.1f} s")
    assert got.hash_failures > 0, "the liar's pieces should have failed their hash check"
    assert liar.endpoint in got.banned, got.banned


@pytest.mark.slow
def test_an_interrupted_fetch_resumes_without_starting_over(nodes, tmp_path):
    model = fake_model(tmp_path / "store", 16 * MB)
    seeder = nodes("seeder", upload_limit=4 * MB)
    magnet = seeder.seed(model_of(model)).magnet
    state = tmp_path / "node-fetcher"
    first = SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True), state).start()
    seen = []
    errors = []

    def fetch():
        try:
            first.fetch(magnet, tmp_path / "out", peers=[seeder.endpoint], timeout=60,
                        progress=lambda p: seen.append(p.done))
        except Exception as e:
            errors.append(e)
    t = threading.Thread(target=fetch)
    t.start()
    wait_until(lambda: seen and seen[-1] >= 6 * MB, 30, "a third of the file")
    first.close()
    t.join(30)
    assert errors and isinstance(errors[0], FetchInterrupted), errors
    had = seen[-1]
    assert had < model.stat().st_size
    assert list((tmp_path / "out").glob(".hearth-partial-*")), "the partial data is kept"
    assert not (tmp_path / "out" / f"hearth-model-{model.stem}.gguf").exists()

    again = nodes("fetcher")  # same state directory: finds the resume data
    got = again.fetch(magnet, tmp_path / "out", peers=[seeder.endpoint], timeout=60)
    assert blake3_file(got.path) == model.stem
    assert got.downloaded < model.stat().st_size - 4 * MB, \
        f"downloaded {got.downloaded} bytes again after having {had}"


def test_content_whose_blake3_does_not_match_never_lands(nodes, tmp_path):
    real = fake_model(tmp_path / "store", 2 * MB)
    wrong = hashlib.sha256(b"not this one").hexdigest()
    seeder = nodes("seeder")
    magnet = seeder.seed(Content(ContentRef("model", wrong), real)).magnet
    fetcher = nodes("fetcher")
    out = tmp_path / "out"
    with pytest.raises(ContentError, match="BLAKE3 mismatch") as err:
        fetcher.fetch(magnet, out, peers=[seeder.endpoint], timeout=30)
    assert "deleted" in str(err.value)
    assert list(out.iterdir()) == []


def test_fetch_refuses_what_it_cannot_verify(nodes, tmp_path):
    seeder = nodes("seeder")
    fetcher = nodes("fetcher")
    skin_magnet = f"magnet:?xt=urn:btih:{'1' * 40}&dn=hearth-skin-{'2' * 64}"
    with pytest.raises(ContentError, match="no way to verify a skin"):
        fetcher.fetch(skin_magnet, tmp_path / "out", peers=[seeder.endpoint], timeout=5)
    plain = tmp_path / "plain" / "notes.txt"
    plain.parent.mkdir()
    plain.write_bytes(b"x" * 50_000)
    ct = lt.create_torrent([lt.create_file_entry("notes.txt", 50_000)])
    lt.set_piece_hashes(ct, str(plain.parent))
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(lt.bencode(ct.generate()))
    atp.save_path = str(plain.parent)
    handle = seeder.session.call(lambda ses: ses.add_torrent(atp))
    # Seeding before the fetcher knocks: a connection made while the seeder still checks its
    # files is refused and retried only seconds later.
    wait_until(lambda: handle.status().is_seeding, 10, "the plain torrent to be seeded")
    magnet = lt.make_magnet_uri(atp.ti).split("&dn=")[0]  # no name: known only from metadata
    with pytest.raises(ContentError, match="not Hearth content"):
        fetcher.fetch(magnet, tmp_path / "out", peers=[seeder.endpoint], timeout=20)
    assert list((tmp_path / "out").iterdir()) == []


# ---- the skin index (BEP44) ----------------------------------------------------------------------

def target(public_key: bytes, salt: bytes = INDEX_SALT) -> bytes:
    """BEP44: the DHT key a mutable item is stored under."""
    return hashlib.sha1(public_key + salt).digest()


def _krpc(sock, addr, query: bytes, args: dict) -> dict:
    sock.sendto(lt.bencode({b"t": b"hx", b"y": b"q", b"q": query, b"a": args}), addr)
    data, _ = sock.recvfrom(65536)
    return lt.bdecode(data)


def test_skin_index_is_read_back_and_tampering_is_refused(nodes, tmp_path):
    from nacl.signing import SigningKey

    creator = SigningKey(b"\x07" * 32)
    pk = creator.verify_key.encode()
    skin_id = hashlib.sha256(b"skin").hexdigest()
    magnet = (f"magnet:?xt=urn:btih:{'ab' * 20}&xt=urn:btmh:1220{'cd' * 32}"
              f"&dn=hearth-skin-{skin_id}")
    value, left_out = encode_index([entry_for(skin_id, "Gruff Smith", magnet)])
    assert not left_out
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    mesh(a, b, c)
    seq, stored = a.put_item(bytes(creator), value)
    assert stored >= 1
    item = c.get_item(pk)
    assert item is not None and item.seq == seq and item.value == value
    verify_item(item, pk)
    index = decode_index(item.value)
    assert [(e.name, e.skin_id, e.magnet) for e in index.entries] == [("Gruff Smith", skin_id,
                                                                        magnet)]

    # Tampered copies are refused by the reader's own check...
    changed = SignedItem(pk, INDEX_SALT, item.seq, item.value.replace(b"Gruff", b"Sweet"),
                         item.signature)
    with pytest.raises(SkinIndexError, match="bad signature"):
        verify_item(changed, pk)
    flipped = SignedItem(pk, INDEX_SALT, item.seq, item.value,
                         bytes([item.signature[0] ^ 1]) + item.signature[1:])
    with pytest.raises(SkinIndexError, match="bad signature"):
        verify_item(flipped, pk)
    other = SigningKey(b"\x09" * 32)
    forged = SignedItem(other.verify_key.encode(), INDEX_SALT, item.seq, item.value,
                        other.sign(b"whatever").signature)
    with pytest.raises(SkinIndexError, match="not the creator"):
        verify_item(forged, pk)

    # ...and by the DHT nodes themselves: a raw BEP44 put of changed content under the
    # creator's key, with the old signature, is rejected, and the index reads back unchanged.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        addr = parse_endpoint(b.endpoint)
        got = _krpc(sock, addr, b"get", {b"id": os.urandom(20), b"target": target(pk)})
        token = got[b"r"][b"token"]
        assert got[b"r"][b"v"] == value
        for seq_try in (item.seq, item.seq + 1):
            reply = _krpc(sock, addr, b"put", {
                b"id": os.urandom(20), b"token": token, b"k": pk, b"salt": INDEX_SALT,
                b"seq": seq_try, b"sig": item.signature,
                b"v": value.replace(b"Gruff", b"Sweet")})
            assert reply[b"y"] == b"e" and reply[b"e"][0] == 206, reply  # invalid signature
    finally:
        sock.close()
    again = a.get_item(pk)
    assert again.value == value and again.seq == seq
    assert c.get_item(other.verify_key.encode()) is None  # nothing under a key never used


# ---- the command line ------------------------------------------------------------------------------

def _start_seeder(args, home):
    proc = hearth_popen("seed", *args, "--listen", "127.0.0.1:0", "--loopback", home=home,
                        env={"PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()
    return proc, lines


@pytest.mark.slow
def test_cli_seed_fetch_install_publish_browse(tmp_path, base, ident, hearth_home):
    from common.identity import identity_path
    from npc.store import ModelStore

    rec, base_path, _ = base
    bundle, skin_id = make_bundle(tmp_path, base, ident)
    # The seeder's home: the creator's key, the default model and the skin.
    home = tmp_path / "seeder-home"
    (home / "models").mkdir(parents=True)
    shutil.copyfile(base_path, home / "models" / base_path.name)
    shutil.copyfile(base_path.with_suffix(".json"), home / "models" / f"{rec.blake3}.json")
    identity_path(home).parent.mkdir(parents=True)
    shutil.copyfile(ident.path, identity_path(home))
    r = hearth("skin", "install", str(bundle), home=home)
    assert r.returncode == 0, r.stderr
    proc, lines = _start_seeder([], home)
    try:
        wait_until(lambda: sum(ln.startswith("magnet: ") for ln in lines) >= 2, 30,
                   f"two magnet lines (got {lines})")
        endpoint = lines[0].split()[1]
        magnets = {parse_magnet(ln.split()[1]).ref.kind: ln.split()[1]
                   for ln in lines if ln.startswith("magnet: ")}
        # Publish and browse first: the DHT holds only the seeder and these two then (nodes of
        # processes that have exited would each cost the lookups a timeout).
        dht = ["--bootstrap", endpoint, "--listen", "127.0.0.1:0", "--loopback"]
        r = hearth("skin", "publish", skin_id[:12], *dht, home=home)
        assert r.returncode == 0, r.stderr
        r = hearth("skin", "browse", ident.public_hex, "--json", *dht, home=tmp_path / "reader-home")
        assert r.returncode == 0, r.stderr
        import json
        listed = json.loads(r.stdout)
        assert [s["id"] for s in listed["skins"]] == [skin_id]
        assert parse_magnet(listed["skins"][0]["magnet"]).ref == ContentRef("skin", skin_id)
        fresh = tmp_path / "fresh-home"
        net = ["--peer", endpoint, "--listen", "127.0.0.1:0", "--loopback"]
        r = hearth("model", "fetch", magnets["model"], *net, home=fresh)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(rec.blake3)
        assert blake3_file(ModelStore(fresh).path(rec.blake3)) == rec.blake3
        r = hearth("skin", "install", magnets["skin"], *net, home=fresh)
        assert r.returncode == 0, r.stderr
        assert f"installed: Gruff Smith {skin_id}" in r.stdout
        r = hearth("fetch", magnets["skin"], "--out", str(tmp_path / "out"), *net, home=fresh)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out" / f"hearth-skin-{skin_id}" / "manifest.json").is_file()

    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read()
    resume = list((home / "swarm" / "resume").glob("*.resume"))
    assert len(resume) == 2, "resume data is saved for both torrents"


@pytest.mark.slow
def test_cli_fetch_of_mislabelled_content_exits_2_and_leaves_nothing(nodes, tmp_path):
    real = fake_model(tmp_path / "store", 1 * MB)
    seeder = nodes("seeder")
    magnet = seeder.seed(Content(ContentRef("model", "0" * 64), real)).magnet
    out = tmp_path / "out"
    r = hearth("fetch", magnet, "--out", str(out), "--peer", seeder.endpoint, "--listen",
               "127.0.0.1:0", "--loopback", home=tmp_path / "home")
    assert r.returncode == 2
    assert "BLAKE3 mismatch" in r.stderr and "hearth: error:" in r.stderr
    assert list(out.iterdir()) == []
    r = hearth("model", "fetch", magnet, "--peer", seeder.endpoint, "--listen", "127.0.0.1:0",
               "--loopback", home=tmp_path / "home")
    assert r.returncode == 2 and "BLAKE3 mismatch" in r.stderr
    assert not list((tmp_path / "home" / "models").glob("*.gguf"))


# ---- the game's swarm box --------------------------------------------------------------------------

def test_window_polls_the_swarm_status(tmp_path, world, base, monkeypatch):
    from game.client import run_window
    from game.session import GameSession
    from game.swarm_box import SwarmBox
    from game.window_swarm import GameSwarm
    from npc.scripted import ScriptedResponder

    rec, _, _ = base
    # The game's node seeds the local stores (here: the default model) in the background.
    swarm = GameSwarm(SwarmSettings(listen="127.0.0.1:0", loopback=True)).start()
    try:
        wait_until(lambda: swarm.status().node.seeded, 20, "the default model to be seeded")
        calls = []

        def status():
            calls.append(swarm.status())
            return calls[-1]
        session = GameSession(world, ScriptedResponder())
        try:
            assert run_window(session, max_frames=3, swarm_status=status) == 0
            assert run_window(session, max_frames=2, swarm_status=SwarmBox(note="not seeding")) == 0
        finally:
            session.close()
    finally:
        swarm.close()
    node = calls[0].node
    assert node.running and not node.fetching and node.peers == 0
    model = ContentRef("model", rec.blake3)
    assert [s.progress for s in node.seeded if s.ref == model] == [1.0]
    off = GameSwarm(SwarmSettings(listen="127.0.0.1:0", loopback=True, seeding=False)).start()
    assert off.status() == SwarmBox(note="seeding is switched off (swarm.toml)")
    assert off.node is None


def test_a_restarted_seeder_uses_its_resume_data_and_hashes_nothing(nodes, tmp_path,
                                                                    monkeypatch):
    import swarm.torrent.seeding
    model = fake_model(tmp_path / "store", 4 * MB)
    first = SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True), tmp_path / "state")
    magnet = first.start().seed(model_of(model)).magnet
    first.close()
    resume = tmp_path / "state" / "resume" / f"hearth-model-{model.stem}.gguf.resume"
    assert resume.is_file()
    for cached in (tmp_path / "state" / "torrents").iterdir():
        cached.unlink()  # only the resume data is left

    def no_hashing(*a, **kw):
        raise AssertionError("the content was hashed again")
    monkeypatch.setattr(swarm.torrent.seeding, "make_torrent", no_hashing)
    again = SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True), tmp_path / "state")
    try:
        assert again.start().seed(model_of(model)).magnet == magnet
        fetcher = nodes("fetcher")
        got = fetcher.fetch(magnet, tmp_path / "out", peers=[again.endpoint], timeout=30)
        assert got.path.read_bytes() == model.read_bytes()
    finally:
        again.close()
