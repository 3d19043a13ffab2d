"""Jobs that name a skin a worker lacks: the worker fetches the bundle over its own libtorrent
session from the requester (which seeds it), the game's checks verify it, it is installed and
the shard is served wearing it. Real ZeroMQ CURVE sockets and real libtorrent sessions, all on
127.0.0.1 (no DHT, no trackers: the assignment names the requester's node as the peer); real skin
bundles made for the real default base model; the deterministic test backend stands in for the
engine (it wears a skin by mixing its id into the "model")."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import zmq

from common.identity import load_or_create_identity
from game.jobs_backend import skin_checks
from jobs_backend import HashBackend
from npc.skins.store import SkinStore
from swarm.content import ContentRef
from swarm.jobs import protocol as p
from swarm.jobs import transport
from swarm.jobs.job_store import JobStore
from swarm.jobs.requester import Requester, job_id
from swarm.jobs.skin_fetch import SkinFetcher
from swarm.jobs.worker import MAX_PASSED_OVER, Worker, _Shard, next_shard
from swarm.jobs.worker_store import WorkerStore
from swarm.settings import SwarmSettings
from swarm.torrent import SwarmNode
from test_jobs_network import MODEL, items_of
from test_skins import base, ident, make_bundle  # noqa: F401  (fixtures and the bundle builder)

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, base, ident):
    """(bundle directory, skin id, base model id) of one real skin, made once."""
    path, sid = make_bundle(tmp_path_factory.mktemp("skin"), base, ident)
    return path, sid, base[0].blake3


@pytest.fixture
def net(tmp_path):
    """Starts loopback swarm nodes and workers; everything is closed at the end."""
    nodes: list[SwarmNode] = []
    workers: list[Worker] = []

    class Net:
        def node(self, name: str) -> SwarmNode:
            n = SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True, dht=False,
                                        lan_discovery=False, stall_timeout=10),
                          tmp_path / f"node-{name}").start()
            nodes.append(n)
            return n

        def worker(self, name: str, base_model: str, *, fetch: bool = True,
                   max_bytes: int = 64 << 20, skins: tuple[str, ...] = ()) -> Worker:
            store = SkinStore(tmp_path / f"{name}-skins")
            fetcher = None
            if fetch:
                verify, install = skin_checks(store, base_model)
                node = self.node(name)
                fetcher = SkinFetcher(lambda: node, tmp_path / f"{name}-downloads", verify,
                                      install, max_bytes, timeout=30)
            w = Worker(HashBackend(), load_or_create_identity(tmp_path / name),
                       WorkerStore(tmp_path / f"{name}.sqlite"), skins=skins,
                       skin_fetcher=fetcher).start()
            w.skin_store = store
            workers.append(w)
            return w
    yield Net()
    for w in workers:
        w.close()
    for n in nodes:
        n.close()


def seed(node: SwarmNode, bundle_dir: Path, skin_id: str) -> str:
    from game.swarm_bridge import skin_content
    return node.seed(skin_content(skin_id, bundle_dir)).magnet


def requester(tmp_path) -> Requester:
    return Requester(load_or_create_identity(tmp_path / "requester"),
                     JobStore(tmp_path / "requester.sqlite"), HashBackend(),
                     heartbeat_timeout=5.0)


def test_a_worker_without_the_skin_fetches_it_from_the_requester_and_serves(net, tmp_path,
                                                                           bundle):
    path, sid, base_model = bundle
    seeder = net.node("requester")
    magnet = seed(seeder, path, sid)
    w = net.worker("w", base_model)
    assert w.signed_offer().offer.fetch_skins and sid not in w.signed_offer().offer.skins
    req = requester(tmp_path)
    offers = [w.signed_offer()]
    assert req.usable_offers(offers, MODEL, sid) == []  # it lacks the skin
    assert len(req.usable_offers(offers, MODEL, sid, skin_fetchable=True)) == 1

    items = items_of(12)
    job = job_id(b"skinned", MODEL, sid)
    outcome = req.run(job, MODEL, sid, items, offers, skin_magnet=magnet,
                      skin_peers=[seeder.endpoint], timeout=60)
    truth = HashBackend()
    for item in items:  # every result is the model wearing the skin, not the bare model
        c = outcome.completions[item.custom_id]
        assert truth.rescore(item, c, sid).ok
    assert any(not truth.rescore(i, outcome.completions[i.custom_id]).ok for i in items)
    (receipt,) = w.store.receipts()
    assert receipt.body.skin == sid and receipt.body.job == job
    assert w.stats.skins_fetched == 1 and w.stats.skin_fetches_failed == 0
    assert w.skin_store.get(sid).skin_id == sid  # installed, and now offered
    assert sid in w.signed_offer().offer.skins
    assert not list((tmp_path / "w-downloads").iterdir())  # nothing left behind


def test_a_checker_without_the_skin_fetches_it_to_check(net, tmp_path, bundle):
    """A requester without the model has another worker re-score a skinned shard: a checker
    that lacks the skin fetches it from the magnet the check names, as a shard's worker does,
    re-scores wearing it, and is paid for the check."""
    path, sid, base_model = bundle
    seeder = net.node("requester")
    magnet = seed(seeder, path, sid)
    has = net.worker("has", base_model, skins=(sid,))
    lacks = net.worker("lacks", base_model)
    req = Requester(load_or_create_identity(tmp_path / "requester"),
                    JobStore(tmp_path / "requester.sqlite"), None, heartbeat_timeout=5.0)
    offers = [has.signed_offer(), lacks.signed_offer()]
    items = items_of(1)  # one shard: the worker with the skin serves it, the other checks it
    job = job_id(b"checked", MODEL, sid)
    outcome = req.run(job, MODEL, sid, items, offers, skin_magnet=magnet,
                      skin_peers=[seeder.endpoint], timeout=60)
    assert HashBackend().rescore(items[0], outcome.completions[items[0].custom_id], sid).ok
    assert outcome.disputes == 0 and not req.store.caught()
    assert [c.checker for c in req.store.checks(job)] == [lacks.identity.public_hex]
    assert lacks.stats.skins_fetched == 1 and has.stats.skins_fetched == 0
    assert sid in lacks.signed_offer().offer.skins
    (check,) = lacks.store.receipts()  # the check's receipt, countersigned
    assert check.body.job == job and check.body.tokens_out == 0


def _tampered(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    sig = dst / "manifest.sig"
    data = bytearray(sig.read_bytes())
    data[len(data) // 2] ^= 0x01
    sig.write_bytes(bytes(data))
    return dst


def test_a_tampered_bundle_is_refused_nothing_installed_and_the_shard_goes_elsewhere(
        net, tmp_path, bundle):
    from swarm.content import Content
    path, sid, base_model = bundle
    bad = _tampered(path, tmp_path / "tampered" / "bundle")
    seeder = net.node("requester")
    # The torrent claims the real skin id, but its signature no longer verifies.
    files = tuple(sorted(f.name for f in bad.iterdir()))
    magnet = seeder.seed(Content(ContentRef("skin", sid), bad, files)).magnet
    fetching = net.worker("fetching", base_model)
    SkinStore(tmp_path / "holding-skins").install(path)
    holding = net.worker("holding", base_model, fetch=False, skins=(sid,))
    items = items_of(8)
    req = requester(tmp_path)
    req.shard_items = 4
    outcome = req.run(job_id(b"tampered", MODEL, sid), MODEL, sid, items,
                      [fetching.signed_offer(), holding.signed_offer()], skin_magnet=magnet,
                      skin_peers=[seeder.endpoint], timeout=60)
    assert set(outcome.completions) == {i.custom_id for i in items}
    assert outcome.reassigned >= 1
    assert fetching.stats.skin_fetches_failed == 1 and fetching.stats.shards_served == 0
    assert holding.stats.shards_served == 2
    assert fetching.skin_store.list() == [] and sid not in fetching.skins
    assert not list((tmp_path / "fetching-downloads").glob("*hearth*"))


def _assign_directly(w: Worker, tmp_path, sid: str, magnet: str, peers: list[str]) -> p.Error:
    """Send one assignment over a real CURVE socket and return the worker's error answer."""
    me = load_or_create_identity(tmp_path / "direct")
    ctx = zmq.Context()
    try:
        sock = transport.jobs_client(ctx, me, w.curve_key, w.jobs_endpoint)
        transport.send(sock, p.Assign(job="a" * 64, shard=0, requester=me.public_hex,
                                      model=MODEL, skin=sid, price_per_1k=1000,
                                      items=items_of(1), skin_magnet=magnet, skin_peers=peers))
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if sock.poll(500):
                msg = p.decode_to_requester(sock.recv())
                if isinstance(msg, p.Error):
                    return msg
        raise AssertionError("the worker never refused")
    finally:
        ctx.destroy(0)


def test_a_worker_that_does_not_fetch_skins_refuses_clearly(net, tmp_path, bundle):
    path, sid, base_model = bundle
    seeder = net.node("requester")
    magnet = seed(seeder, path, sid)
    w = net.worker("w", base_model, fetch=False)
    assert not w.signed_offer().offer.fetch_skins
    assert requester(tmp_path).usable_offers([w.signed_offer()], MODEL, sid,
                                             skin_fetchable=True) == []
    err = _assign_directly(w, tmp_path, sid, magnet, [seeder.endpoint])
    assert err.code == p.SKIN and "does not fetch skins" in err.message
    assert w.skin_store.list() == [] and w.stats.shards_served == 0


def test_a_skin_over_the_size_cap_is_refused_before_download(net, tmp_path, bundle):
    path, sid, base_model = bundle
    seeder = net.node("requester")
    magnet = seed(seeder, path, sid)
    w = net.worker("w", base_model, max_bytes=1024)
    err = _assign_directly(w, tmp_path, sid, magnet, [seeder.endpoint])
    assert err.code == p.SKIN and "limit" in err.message, err.message
    assert w.skin_store.list() == [] and w.stats.skin_fetches_failed == 1
    stats = seeder.torrent_stats(ContentRef("skin", sid))
    assert stats.uploaded < 64 * 1024  # the metadata, not the bundle


def test_the_compute_thread_keeps_a_skin_on_until_a_waiting_shard_has_waited_enough():
    def shard(skin):
        return _Shard(b"", p.Assign(job="a" * 64, shard=0, requester="b" * 64, model=MODEL,
                                    skin=skin, price_per_1k=1, items=items_of(1)))
    x, y = "1" * 64, "2" * 64
    waiting = [shard(y), shard(x), shard(x), shard(x), shard(x)]
    order = []
    wearing = x
    while waiting:
        s = next_shard(waiting, wearing)
        waiting.remove(s)
        order.append(s.assign.skin)
        wearing = s.assign.skin
    # y waits for at most MAX_PASSED_OVER shards of the skin already worn, then x resumes.
    assert order == [x] * MAX_PASSED_OVER + [y] + [x] * (4 - MAX_PASSED_OVER)


@pytest.mark.slow
def test_hearth_jobs_submit_skin_seeds_it_and_hearth_worker_fetches_it(tmp_path, bundle):
    """The command lines as separate processes: the requester has the skin installed and seeds
    it; the worker lacks it, fetches it, installs it and serves wearing it."""
    import json
    import subprocess
    import sys

    from conftest import ROOT, sealed_env
    from jobs_backend import detokenize
    from swarm.jobs.batchfile import parse_batch
    from test_jobs_cli import RUNNER, WorkerProc
    from test_jobs_network import batch_bytes

    path, sid, _ = bundle
    SkinStore(tmp_path / "req").install(path)
    net = ["--loopback", "--dht-listen", "127.0.0.1:0"]
    w = WorkerProc("honest+skins", tmp_path / "w", *net)
    try:
        requests = tmp_path / "requests.jsonl"
        requests.write_bytes(batch_bytes(10))
        out = tmp_path / "results.jsonl"
        done = subprocess.run(
            [sys.executable, RUNNER, "honest", "jobs", "submit", "--no-escrow", requests,
             "--model", "default", "--skin", sid, "--out", out, "--peer", w.endpoint,
             "--timeout", "90", *net],
            cwd=ROOT, env=sealed_env(tmp_path / "req"), capture_output=True, text=True,
            timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"seeding skin {sid[:16]}" in done.stderr
    finally:
        w.stop()
    stderr = w.proc.stderr.read()
    assert "skins fetched from the swarm: 1, refused or failed: 0" in stderr, stderr
    assert SkinStore(tmp_path / "w").get(sid).skin_id == sid
    truth = HashBackend()
    got = [json.loads(x) for x in out.read_text().splitlines()]
    for ln, g in zip(parse_batch(requests.read_bytes()), got):
        tokens, _ = truth._decode(ln.item, truth.salt + sid.encode())
        assert g["response"]["body"]["choices"][0]["message"]["content"] == detokenize(tokens)


@pytest.mark.model
@pytest.mark.slow
def test_a_real_worker_fetches_a_village_skin_and_serves_wearing_it(tmp_path):
    """The real engine: the worker has no skin installed; the requester has the pirate skin and
    seeds it; the worker fetches, verifies against its base model, installs and serves it, and
    the requester re-scores every shard wearing the skin."""
    import json
    import signal

    from conftest import hearth, hearth_popen
    from game.village_skins import BUNDLES_DIR
    from npc.skins.bundle import read_signed
    from test_jobs_model import batch_file, serving_endpoint

    bundle_dir = BUNDLES_DIR / "pirate"
    sid = read_signed(bundle_dir).skin_id
    r = hearth("skin", "install", bundle_dir, home=tmp_path / "requester", timeout=600)
    assert r.returncode == 0, r.stderr
    requests, out = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    batch_file(requests, 6)
    net = ["--loopback", "--dht-listen", "127.0.0.1:0"]
    worker = hearth_popen("worker", "--listen", "127.0.0.1:0", *net,
                          home=tmp_path / "worker", env={"PYTHONUNBUFFERED": "1"})
    try:
        peer = serving_endpoint(worker)
        r = hearth("jobs", "submit", requests, "--model", "default", "--skin", sid, "--out", out,
                   "--peer", peer, "--verify-fraction", "1", "--no-escrow", *net,
                   home=tmp_path / "requester", timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(got) == 6 and all(g["response"]["status_code"] == 200 for g in got)
        assert "0 worker(s) caught cheating" in r.stderr + r.stdout  # re-scored with the skin
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    stderr = worker.stderr.read()
    assert "skins fetched from the swarm: 1, refused or failed: 0" in stderr, stderr[-3000:]
    assert (tmp_path / "worker" / "skins" / sid).is_dir()


def test_the_new_fields_stay_off_the_wire_unless_used_and_are_checked():
    import msgspec

    from swarm.jobs.backend import Completion
    from swarm.jobs.offers import Offer, offer_bytes
    a = p.Assign(job="a" * 64, shard=0, requester="b" * 64, model=MODEL, skin="d" * 64,
                 price_per_1k=1, items=items_of(1))
    r = p.Rescore(job="a" * 64, shard=0, requester="b" * 64, model=MODEL, skin="d" * 64,
                  items=items_of(1), claims=[Completion("r0", [1, 2], "ab", 3, "stop")])
    for msg in (a, r):
        raw = msgspec.msgpack.decode(p.encode(msg))
        assert "skin_magnet" not in raw and "skin_peers" not in raw  # an older worker reads it
        named = msgspec.structs.replace(msg, skin_magnet="magnet:?xt=urn:btih:" + "0" * 40,
                                        skin_peers=["127.0.0.1:6881"])
        assert p.decode_to_worker(p.encode(named)) == named
        for field, bad in (("skin_magnet", "http://example.org/skin"),
                           ("skin_peers", ["127.0.0.1:1"] * (p.MAX_SKIN_PEERS + 1))):
            frame = dict(msgspec.msgpack.decode(p.encode(named)), **{field: bad})
            with pytest.raises(p.ProtocolError, match=field):
                p.decode_to_worker(msgspec.msgpack.encode(frame))
    offer = Offer(worker="e" * 64, models=[MODEL], skins=[], price_per_1k=1, capacity=1,
                  endpoint="127.0.0.1:1", curve_key="f" * 64, issued=1)
    # An offer that does not fetch skins signs the very bytes it did before the field existed.
    assert b"fetch_skins" not in offer_bytes(offer)
    assert b"fetch_skins" in offer_bytes(msgspec.structs.replace(offer, fetch_skins=True))


def test_worker_toml_fetch_skins_and_its_size_cap(tmp_path):
    from swarm.jobs.settings import load_worker_settings
    from swarm.settings import SettingsError
    s = load_worker_settings(tmp_path / "none.toml")
    assert (s.fetch_skins, s.max_skin_mb) == (True, 64)
    cfg = tmp_path / "worker.toml"
    cfg.write_text("fetch_skins = false\nmax_skin_mb = 8\n")
    s = load_worker_settings(cfg)
    assert (s.fetch_skins, s.max_skin_mb) == (False, 8)
    cfg.write_text("max_skin_mb = 0\n")
    with pytest.raises(SettingsError, match="max_skin_mb"):
        load_worker_settings(cfg)
