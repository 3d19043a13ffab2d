"""``hearth jobs submit``, ``hearth jobs status`` and ``hearth worker``: batch inference bought
from and sold to other players' machines. The model engine both sides need comes from one place,
``make_backend``."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

from common.files import atomic_write
from common.identity import load_or_create_identity
from common.paths import data_dir
from game.cli_error import CliError
from game.notices import note
from swarm.jobs.backend import InferenceBackend
from swarm.jobs.batchfile import (
    BatchFileError, error_line, parse_batch, render_lines, result_line,
)
from swarm.jobs.discovery import OFFER_TIMEOUT
from swarm.jobs.job_store import FINISHED, JobStore
from swarm.jobs.receipt import UNITS_PER_GOLD
from swarm.jobs.requester import (
    DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_VERIFY_FRACTION, JobError, Requester, job_id,
)
from swarm.settings import load_settings, parse_endpoint, parse_endpoints

DHT_WAIT_SECONDS = 10.0
DHT_LOOKUP_SECONDS = 20.0


def make_backend(model: str) -> InferenceBackend:
    """The model engine that serves shards (``hearth worker``) and re-scores workers' claims
    (``hearth jobs submit``). ``model`` is a model id (the BLAKE3 of a model file in the model
    store) or ``default`` for the game's own model. This is the one place the command line gets
    an ``InferenceBackend``."""
    from game.jobs_backend import load_backend
    from npc.serving import ServingError
    from npc.store import StoreError
    try:
        return load_backend(model)
    except (ServingError, StoreError) as e:
        raise CliError(f"cannot serve or check with model {model}: {e}") from None


def jobs_dir() -> Path:
    d = data_dir() / "jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _backend_for(model: str) -> InferenceBackend:
    return _same_model(make_backend(model), model)


def _same_model(backend: InferenceBackend, model: str) -> InferenceBackend:
    if model != "default" and backend.model_id != model:
        raise CliError(f"model {model[:16]} is not the one this machine runs "
                       f"({backend.model_id[:16]})")
    return backend


def _verifier_for(model: str) -> InferenceBackend | None:
    """The model to re-score workers' claims with; None when a model named by id is not on
    this machine (a second worker then checks)."""
    try:
        backend = make_backend(model)
    except CliError:
        if model == "default" or len(model) != 64 \
                or any(c not in "0123456789abcdef" for c in model):
            raise
        note(f"model {model[:16]} is not on this machine: a second worker will check the results")
        return None
    return _same_model(backend, model)


def _skin(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise CliError(f"--skin {text!r} is not a skin id (64 lowercase hex digits)")
    return text


def _skin_source(args: argparse.Namespace, skin: str | None, offers) -> tuple:
    """(the swarm node seeding the job's skin or None, its magnet link or None, peers to fetch it
    from): an installed skin is seeded from here for the job's duration, with this node named as
    its peer; ``--skin-magnet`` names a skin this machine does not have (workers then find its
    seeds through their own DHT)."""
    from swarm.content import ContentError, ContentRef, parse_magnet
    if skin is None:
        if args.skin_magnet:
            raise CliError("--skin-magnet goes with --skin SKIN_ID")
        return None, None, []
    if args.skin_magnet:
        try:
            ref = parse_magnet(args.skin_magnet).ref
        except ContentError as e:
            raise CliError(f"--skin-magnet: {e}") from None
        if ref != ContentRef("skin", skin):
            raise CliError(f"--skin-magnet is not the torrent of skin {skin[:16]} (its name is "
                           f"{ref.torrent_name if ref else 'not a Hearth skin'})")
    from npc.skins.store import SkinStore
    store = SkinStore()
    if not store.is_installed(skin):
        if args.skin_magnet:
            return None, args.skin_magnet, []
        note(f"skin {skin[:16]} is not installed here and no --skin-magnet was given: only "
             f"workers that have it can serve the job")
        return None, None, []
    from game.swarm_bridge import skin_content, start_node
    from swarm.torrent import SwarmError
    try:
        node = start_node(_network_settings(args))
        seeded = node.seed(skin_content(skin, store.path(skin)))
    except (SwarmError, ContentError) as e:
        raise CliError(f"cannot seed skin {skin[:16]} for the workers: {e}") from None
    host = node.settings.listen_host
    if host in ("0.0.0.0", "::", "") and offers:
        host = _facing_host(offers[0].offer.endpoint)
    note(f"seeding skin {skin[:16]} for workers that lack it, at {host}:{node.session.port}")
    return node, seeded.magnet, [f"{host}:{node.session.port}"]


def _facing_host(endpoint: str) -> str:
    """This machine's address on the route to ``endpoint`` (what a worker there can reach)."""
    import socket
    host, port = parse_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))  # UDP: picks the route, sends nothing
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _network_settings(args: argparse.Namespace):
    overrides = {"loopback": True if args.loopback else None,
                 "listen": args.dht_listen}
    if args.bootstrap is not None:
        overrides["bootstrap"] = parse_endpoints(args.bootstrap)
    return load_settings(**overrides)


def _start_dht(args: argparse.Namespace):
    """A swarm node joined to the DHT through ``--bootstrap`` (or swarm.toml's bootstrap)."""
    from game.swarm_bridge import start_node

    settings = _network_settings(args)
    if not settings.bootstrap:
        raise CliError("finding workers needs the DHT: give --bootstrap HOST:PORT (or set "
                       "bootstrap in swarm.toml), or name workers with --peer HOST:PORT")
    node = start_node(settings)
    deadline = time.monotonic() + DHT_WAIT_SECONDS
    while not node.dht_node_count():
        if time.monotonic() > deadline:
            node.close()
            raise CliError("no DHT node answered: check --bootstrap HOST:PORT")
        time.sleep(0.25)
    return node


# ---- jobs submit ---------------------------------------------------------------------------------

def _find_offers(args: argparse.Namespace, requester: str, model: str):
    from swarm.jobs.discovery import fetch_offers, find_endpoints

    if args.peer:
        for endpoint in args.peer:
            parse_endpoint(endpoint)
        endpoints = list(args.peer)
    else:
        node = _start_dht(args)
        try:
            note(f"looking up workers for model {model[:16]} in the DHT")
            endpoints = find_endpoints(node, model, DHT_LOOKUP_SECONDS)
        finally:
            node.close()
    if not args.offer_timeout > 0:
        raise CliError(f"--offer-timeout must be a positive number of seconds, "
                       f"not {args.offer_timeout:g}")
    offers = fetch_offers(endpoints, requester, model, timeout=args.offer_timeout)
    if not offers:
        where = "at " + ", ".join(args.peer) if args.peer else "in the DHT"
        raise CliError(f"no worker serving model {model[:16]} answered {where}")
    return offers


def _escrow_funds(identity):
    """The wallet a job's budget is locked from: the ledger (with this machine's receipts
    recorded), the chain (the embedded one is started if needed) and the user's key. Every
    escrow step is reported as it happens."""
    from game.wallet_cli import _client, gold, open_ledger
    from npc.skins.store import SkinStore
    from swarm.credits.chain import keypair_for
    from swarm.jobs.job_escrow import EscrowFunds

    ledger, _ = open_ledger()
    client = _client(start=True)

    def step(name: str, info: dict) -> None:
        who = info["worker"][:12]
        if name in ("locked", "topped_up"):
            note(f"escrow: {'locked' if name == 'locked' else 'added'} {gold(info['amount'])} "
                 f"gold for worker {who}")
        elif name == "settled":
            note(f"escrow: released {gold(info['amount'])} gold to worker {who} and the job's "
                 f"skin creators for {info['receipts']} receipt(s) ({info['signature']})")
        elif name == "refunded":
            note(f"escrow: {gold(info['amount'])} gold returned from worker {who}'s escrow")
    return EscrowFunds(ledger, client, keypair_for(identity),
                       royalty_split=SkinStore().royalty_split, on_step=step)


def cmd_submit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from game.wallet_cli import gold, parse_gold
    from swarm.credits.escrow import EscrowError

    try:
        data = args.requests.read_bytes()
    except OSError as e:
        raise CliError(f"{args.requests}: cannot read ({e.strerror})") from None
    try:
        lines = parse_batch(data, name=str(args.requests))
    except BatchFileError as e:
        raise CliError(str(e)) from None
    skin = _skin(args.skin)
    backend = _verifier_for(args.model)
    model = backend.model_id if backend is not None else args.model
    budget = parse_gold(args.budget) if args.budget is not None else None
    if budget is not None and args.no_escrow:
        raise CliError("--budget is what escrow locks: it cannot go with --no-escrow")
    identity = load_or_create_identity()
    store = JobStore(jobs_dir() / "requester.sqlite")
    job = job_id(data, model, skin)
    items = [ln.item for ln in lines if ln.item is not None]
    funds = None if args.no_escrow or not items else _escrow_funds(identity)
    requester = Requester(identity, store, backend, verify_fraction=args.verify_fraction,
                          heartbeat_timeout=args.heartbeat_timeout, max_price=args.max_price,
                          max_workers=args.workers, escrow=funds)
    held = store.job(job)
    escrowed = bool(funds and funds.ledger.escrows("open", "opening", job=job))
    if items and held is not None and held.state == FINISHED and not escrowed:
        completions = store.results(job)
        summary = (f"finished before: {held.accepted} shard(s), {held.receipts} receipt(s); "
                   f"nothing bought again")
    elif items:
        offers = _find_offers(args, identity.public_hex, model)
        seeder, skin_magnet, skin_peers = _skin_source(args, skin, offers)
        usable = requester.usable_offers(offers, model, skin, skin_fetchable=bool(skin_magnet))
        if not usable:
            if seeder is not None:
                seeder.close()
            cap = f" at most {args.max_price} micro-gold per 1k tokens" if args.max_price else ""
            raise CliError(f"{len(offers)} worker(s) answered but none serves this job{cap} "
                           f"(model, skin, price, or a fraud record of yours against them)")
        note(f"job {job[:16]}: {len(items)} request(s) on up to {len(usable)} worker(s)")
        if funds is not None:
            limit = budget or requester.default_budget(items, usable)
            note(f"escrow: up to {gold(limit)} gold is locked for the workers before they are "
                 f"sent shards" + ("" if budget else " (twice the job's maximum cost)"))
        with Progress(TextColumn("[bold]shards"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), console=Console(stderr=True)) as bar:
            task = bar.add_task("shards", total=None, detail="")

            def progress(p) -> None:
                rate = p.tokens_out / p.elapsed if p.elapsed > 0 else 0.0
                bar.update(task, total=p.shards, completed=p.accepted,
                           detail=f"verifying {p.verifying} · reassigned {p.reassigned} · "
                                  f"caught {p.caught} · {rate:.0f} tok/s")
            try:
                outcome = requester.run(job, model, skin, items, offers,
                                        input_name=str(args.requests), output_name=str(args.out),
                                        progress=progress, timeout=args.timeout, budget=budget,
                                        skin_magnet=skin_magnet, skin_peers=skin_peers)
            except EscrowError as e:
                raise CliError(f"{e}; nothing was sent to any worker (add gold with `hearth "
                               f"wallet airdrop N` on the embedded chain or `hearth wallet "
                               f"sync`, give a smaller --budget, or --no-escrow)",
                               exit_code=1) from None
            except JobError as e:
                raise CliError(f"{e}; run the same command again to resume the job",
                               exit_code=1) from None
            except KeyboardInterrupt:
                note("interrupted: accepted shards are kept; run the same command to resume")
                raise
            finally:
                if seeder is not None:
                    seeder.close()
        completions, caught = outcome.completions, outcome.caught
        summary = (f"{outcome.shards} shard(s), {outcome.verified_shards} re-scored, "
                   f"{outcome.reassigned} reassigned, {len(caught)} worker(s) caught cheating; "
                   f"{outcome.receipts} receipt(s), {outcome.paid / UNITS_PER_GOLD:.6f} gold")
        if funds is not None:
            summary += (f"; {gold(outcome.released)} gold released from escrow, "
                        f"{gold(outcome.refunded)} returned")
            for problem in outcome.escrow_problems:
                note(f"escrow: {problem}")
            if outcome.escrows_open:
                note(f"escrow: {outcome.escrows_open} escrow(s) still hold gold: their workers "
                     f"must co-sign; run the same command again while they are online")
    else:
        completions, summary = {}, "nothing to run"
    created = int(time.time())
    out = [result_line(job, ln.custom_id, model, completions[ln.custom_id], created)
           if ln.item is not None else error_line(job, ln.custom_id, ln.error) for ln in lines]
    atomic_write(args.out, render_lines(out))
    if funds is not None:
        funds.client.close()
        funds.ledger.close()
    refused = [ln for ln in lines if ln.item is None]
    print(f"job {job}: {len(items)} result(s) written to {args.out} ({summary})")
    if refused:
        raise CliError(f"{len(refused)} request(s) could not be honoured, first {args.requests} "
                       f"line {refused[0].line}: {refused[0].error} (their error lines are in "
                       f"{args.out})", exit_code=1)
    return 0


# ---- jobs status ---------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    path = jobs_dir() / "requester.sqlite"
    rows = JobStore(path).jobs() if path.exists() else []
    if args.json:
        print(json.dumps([{"job": r.id, "state": r.state, "model": r.model, "skin": r.skin,
                           "requests": r.requests, "shards": r.shards,
                           "shards_accepted": r.accepted, "receipts": r.receipts,
                           "paid_micro_gold": r.paid, "input": r.input, "output": r.output,
                           "updated": r.updated} for r in rows]))
        return 0
    if not rows:
        print("no jobs yet")
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated))
        print(f"{r.id[:16]}  {r.state:8s} {r.accepted}/{r.shards} shards  {r.requests} requests  "
              f"{r.receipts} receipts  {r.paid / UNITS_PER_GOLD:.6f} gold  {when}  "
              f"{r.input} -> {r.output}")
    return 0


# ---- worker --------------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    from swarm.jobs.discovery import REANNOUNCE_SECONDS, announce
    from swarm.jobs.settings import load_worker_settings
    from swarm.jobs.transport import z85_key
    from swarm.jobs.worker import Worker
    from swarm.jobs.worker_store import WorkerStore

    parse_endpoint(args.listen, allow_zero=True)
    settings = load_worker_settings(price_per_1k=args.price, capacity=args.capacity,
                                    require_escrow=True if args.require_escrow else None)
    backend = _backend_for(args.model)
    identity = load_or_create_identity()
    store = WorkerStore(jobs_dir() / "worker.sqlite")
    escrow = _worker_escrow(identity, store, settings.require_escrow)
    stop = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    nodes: list = []  # the worker's one swarm node (DHT and skin fetches), once started
    node = None
    if args.bootstrap is not None or _network_settings(args).bootstrap:
        node = _start_dht(args)
        nodes.append(node)
    worker = Worker(backend, identity, store, listen=args.listen,
                    price_per_1k=settings.price_per_1k, capacity=settings.capacity,
                    skins=getattr(backend, "skins", tuple)(), escrow=escrow,
                    require_escrow=settings.require_escrow,
                    skin_fetcher=_skin_fetcher(args, settings, backend, nodes))
    try:
        worker.start()
        port = int(worker.offer_endpoint.rpartition(":")[2])
        if node is not None:
            announce(node, [backend.model_id], port)
        print(f"serving: {worker.offer_endpoint} key {identity.public_hex} curve "
              f"{z85_key(worker.curve_key).decode()} model {backend.model_id} price "
              f"{settings.price_per_1k}", flush=True)
        started = time.monotonic()
        next_announce = started + REANNOUNCE_SECONDS
        said = {"served": -1, "fetched": 0, "failed": 0}
        while not stop.wait(0.5):
            if args.duration is not None and time.monotonic() - started > args.duration:
                break
            if node is not None and time.monotonic() > next_announce:
                announce(node, [backend.model_id], port)
                next_announce = time.monotonic() + REANNOUNCE_SECONDS
            _tell_stats(worker.stats, said)
        _tell_stats(worker.stats, said)  # whatever happened since the last look
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        worker.close()
        for n in nodes:
            n.close()
        if escrow is not None:
            escrow.client.close()
    return 0


def _tell_stats(s, said: dict) -> None:
    """Note the skins fetched and shards served since the last note (``said`` keeps count)."""
    if (s.skins_fetched, s.skin_fetches_failed) != (said["fetched"], said["failed"]):
        said["fetched"], said["failed"] = s.skins_fetched, s.skin_fetches_failed
        note(f"skins fetched from the swarm: {s.skins_fetched}, refused or failed: "
             f"{s.skin_fetches_failed}")
    if s.shards_served != said["served"]:
        said["served"] = s.shards_served
        note(f"served {s.shards_served} shard(s), {s.tokens_generated} tokens, "
             f"{s.receipts_held} receipt(s) held ({s.receipts_amount / UNITS_PER_GOLD:.6f} gold)")


def _skin_fetcher(args: argparse.Namespace, settings, backend, nodes: list):
    """``jobs_backend.skin_fetcher`` over the swarm node in ``nodes``, started on the first
    fetch if there is none."""
    from game.jobs_backend import skin_fetcher
    lock = threading.Lock()

    def node():
        from game.swarm_bridge import start_node
        with lock:
            if not nodes:
                nodes.append(start_node(_network_settings(args)))
            return nodes[0]
    return skin_fetcher(settings, backend, node)


def _worker_escrow(identity, store, required: bool):
    """What checks escrows and co-signs their transactions: needs the chain. With
    ``require_escrow`` the embedded chain is started if none answers; without, a chain that does
    not answer means escrowed shards are refused and unescrowed ones served."""
    from swarm.credits.chain import ChainError, connect, load_wallet_settings
    from swarm.jobs.worker_escrow import WorkerEscrow

    try:
        client = connect(load_wallet_settings(), start=required)
    except ChainError as e:
        if required:
            raise CliError(f"require_escrow is set but {e}") from None
        note("no chain answers: shards with escrow are refused (start one with `hearth chain`)")
        return None
    return WorkerEscrow(client, identity, store)


# ---- the parser ----------------------------------------------------------------------------------

def _add_network_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT,...",
                   help="DHT nodes to join through (default: swarm.toml's bootstrap)")
    p.add_argument("--dht-listen", default=None, metavar="HOST:PORT",
                   help="where this machine's DHT node listens (default from swarm.toml)")
    p.add_argument("--loopback", action="store_true",
                   help="test mode: every peer and DHT node is on this machine (127.0.0.1)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a fraction from 0 to 1")
    return value


def add_commands(sub) -> None:
    """Register ``jobs`` (submit, status) and ``worker`` on the main parser's subcommands."""
    p = sub.add_parser("jobs", help="run batch inference on other players' machines",
                       description="Submit a batch of chat requests to workers found through the "
                                   "DHT, or list your jobs.")
    jsub = p.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)

    q = jsub.add_parser("submit", help="run a Batch API file on workers",
                        description="Read REQUESTS (the OpenAI Batch API input format: one "
                                    "{custom_id, method, url, body} per line), split it into "
                                    "shards (no worker sees more than one shard of the job while "
                                    "there are enough workers), run them on workers serving "
                                    "MODEL, re-score a sample of every worker's output on your "
                                    "own copy of the model, and write OUT in the Batch API output "
                                    "format, in input order. A worker caught cheating is paid "
                                    "nothing for the job, gets a fraud record and is never used "
                                    "again; its shards are redone. Body fields honoured: "
                                    "messages, max_tokens, temperature, top_p, seed (model is "
                                    "read but --model decides); any other field a request "
                                    "cannot have honoured is an error line for that request. "
                                    "Exits 0 when every request has an accepted result, 1 when "
                                    "some could not be honoured or the job could not finish (run "
                                    "the same command again to resume it: shards already "
                                    "accepted are not bought again), 2 on a bad file or option. "
                                    "Escrow: before a worker is sent a shard, gold covering "
                                    "the most its shards can cost is locked in an account only "
                                    "you and that worker together can move (a 2-of-2 SPL "
                                    "multisig on the chain `hearth wallet` uses); the worker "
                                    "checks it on chain before working. When the job completes "
                                    "each worker's receipts are paid out of its escrow (it "
                                    "co-signs; these receipts are never settled again) and the "
                                    "rest comes back to you (it co-signs again). What escrow "
                                    "cannot do: a worker that vanishes or refuses to sign keeps "
                                    "your gold locked until it signs — there is no time-out "
                                    "refund and no arbiter (both need a custom on-chain "
                                    "program); the chain does not check that a release matches "
                                    "the work; each escrow's multisig account keeps about "
                                    "0.0034 SOL of rent for good.")
    q.add_argument("requests", type=Path, metavar="REQUESTS.jsonl")
    q.add_argument("--model", required=True, metavar="MODEL",
                   help="the model id (BLAKE3 hex) to run, or 'default' for the game's model")
    q.add_argument("--skin", default=None, metavar="SKIN_ID",
                   help="a skin for every request; when it is installed here it is seeded over "
                        "the swarm for the job's duration, so workers that lack it (and fetch "
                        "skins) fetch it, verify it and serve wearing it")
    q.add_argument("--skin-magnet", default=None, metavar="MAGNET",
                   help="the skin's magnet link (as `hearth seed` or `hearth skin browse` print "
                        "it), for a skin not installed here: workers fetch it from its seeds")
    q.add_argument("--out", type=Path, required=True, metavar="RESULTS.jsonl")
    q.add_argument("--max-price", type=int, default=None, metavar="MICRO_GOLD",
                   help="the most you pay per 1,000 tokens, in micro-gold (1 gold = 1,000,000)")
    q.add_argument("--workers", type=int, default=None, metavar="N",
                   help="use at most N workers (default: every suitable one found)")
    q.add_argument("--peer", action="append", default=None, metavar="HOST:PORT",
                   help="a worker's endpoint (as its `serving:` line prints); repeatable; "
                        "skips the DHT")
    q.add_argument("--verify-fraction", type=_fraction, default=DEFAULT_VERIFY_FRACTION,
                   metavar="F", help="share of shards re-scored besides each worker's first "
                                     f"(default {DEFAULT_VERIFY_FRACTION})")
    q.add_argument("--offer-timeout", type=float, default=OFFER_TIMEOUT, metavar="SECONDS",
                   help="how long each worker has to answer with its offer; one that answers "
                        f"later is left out of the job (default {OFFER_TIMEOUT:g})")
    q.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_HEARTBEAT_TIMEOUT,
                   metavar="SECONDS", help="reassign a shard whose worker is silent this long")
    q.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up (resumably) after this long")
    q.add_argument("--budget", default=None, metavar="GOLD",
                   help="the most gold the job locks in escrow (default: twice the job's "
                        "maximum cost at the dearest worker's price, so every shard can be "
                        "redone once); refused before anything is sent when your wallet "
                        "cannot lock it")
    q.add_argument("--no-escrow", action="store_true",
                   help="lock nothing: workers trust you to settle their receipts later with "
                        "`hearth wallet settle` (workers with require_escrow refuse the job)")
    _add_network_args(q)
    q.set_defaults(func=cmd_submit)

    q = jsub.add_parser("status", help="list your jobs",
                        description="List the jobs recorded on this machine, running and "
                                    "finished: shards accepted, receipts, gold paid.")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=cmd_status)

    p = sub.add_parser("worker", help="serve other people's batch inference jobs",
                       description="Serve shards of jobs on this machine's model until "
                                   "interrupted, announcing an offer (model, price per 1,000 "
                                   "tokens, capacity, endpoint, encryption key) signed with your "
                                   "identity in the DHT. Prints a line `serving: HOST:PORT key "
                                   "ED25519 curve Z85 ...` once it accepts shards; requesters can "
                                   "name HOST:PORT with --peer. Every shard accepted yields a "
                                   "receipt signed by both sides, kept on this machine. Price and "
                                   "capacity come from worker.toml unless given here. A shard "
                                   "whose requester names an escrow is served only once the "
                                   "escrow checks out on chain (a gold account of a 2-of-2 "
                                   "multisig of the requester and you, holding enough); you "
                                   "co-sign its release only for receipts you hold, and its "
                                   "refund only once they are all paid. A shard wearing a skin "
                                   "you lack is taken when its requester names the skin's "
                                   "magnet link: the skin is fetched over the swarm, verified "
                                   "(signature, every file's hash, made for your model) and "
                                   "installed first (worker.toml: fetch_skins = true, "
                                   "max_skin_mb = 64); a skin that fails is refused and nothing "
                                   "is installed.")
    p.add_argument("--listen", default="0.0.0.0:7880", metavar="HOST:PORT",
                   help="the offer socket (the encrypted jobs socket uses the next port; "
                        "port 0 picks free ones; default 0.0.0.0:7880)")
    p.add_argument("--model", default="default", metavar="MODEL",
                   help="the model to serve (default: the game's model)")
    p.add_argument("--price", type=int, default=None, metavar="MICRO_GOLD",
                   help="price per 1,000 tokens in micro-gold (default from worker.toml: 100)")
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="requests decoded at once, as the offer states")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long instead of waiting for Ctrl-C")
    p.add_argument("--require-escrow", action="store_true",
                   help="serve only jobs whose requester locked gold in escrow for you "
                        "(default from worker.toml's require_escrow: off); escrows are checked "
                        "on chain whenever one answers")
    _add_network_args(p)
    p.set_defaults(func=cmd_worker)

