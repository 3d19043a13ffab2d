"""The jobs wire protocol, offers, fraud records, the worker's settings and the away policy."""

from __future__ import annotations

import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.identity import load_or_create_identity
from swarm.jobs import protocol as p
from swarm.jobs.away import (
    BUSY_CPU, OFF, ON_BATTERY, PLAYER_PRESENT, SERVING, AwayPolicy, Observation, SwitchGate,
)
from swarm.jobs.backend import ChatMessage, Completion, WorkItem
from swarm.jobs.fraud import FraudRecord, sign_fraud, verify_fraud
from swarm.jobs.offers import Offer, OfferError, SignedOffer, sign_offer, verify_offer
from swarm.jobs.receipt import Receipt, ReceiptBody
from swarm.jobs.settings import WorkerSettings, load_worker_settings
from swarm.settings import SettingsError

H = "ab" * 32


@pytest.fixture
def ident(tmp_path):
    return load_or_create_identity(tmp_path / "id")


def an_offer(ident, **kw) -> Offer:
    fields = dict(worker=ident.public_hex, models=[H], skins=[], price_per_1k=100, capacity=8,
                  endpoint="127.0.0.1:7881", curve_key=ident.curve_keypair()[0].hex(),
                  issued=int(time.time()))
    fields.update(kw)
    return Offer(**fields)


def every_message(ident):
    item = WorkItem("r1", [ChatMessage("user", "hi")], 8, 0.7, 0.9, 3)
    done = Completion("r1", [1, 2], "ab", 5, "stop")
    body = ReceiptBody(job=H, shard=1, requester=H, worker="cd" * 32, model=H, skin=None,
                       tokens_in=5, tokens_out=2, price_per_1k=100, amount=1)
    return [p.Hello(requester=H),
            p.Assign(job=H, shard=2, requester=H, model=H, skin=H, price_per_1k=5, items=[item]),
            p.Cancel(job=H, shard=0), p.SignReceipt(body=body, requester_sig="00" * 64),
            p.OfferReply(signed=sign_offer(an_offer(ident), ident)),
            p.Accepted(job=H, shard=2), p.Heartbeat(job=H, shard=2, done=1, paused=True),
            p.Result(job=H, shard=2, completions=[done]), p.ShardReleased(job=H, shard=2),
            p.Countersigned(receipt=Receipt(body, "00" * 64, "11" * 64)),
            p.Error(code=p.BUSY, message="full", job=H, shard=2),
            p.Assign(job=H, shard=2, requester=H, model=H, skin=None, price_per_1k=5,
                     items=[item], escrow=p.EscrowTerms(account=H, multisig=H, amount=9)),
            p.CosignRelease(job=H, account=H, message=b"m", requester_sig="00" * 64,
                            receipts=[H]),
            p.CosignRefund(job=H, account=H, message=b"m", requester_sig="00" * 64,
                           requester=H, multisig=H),
            p.Cosigned(job=H, account=H, signature="11" * 64)]


def test_every_message_round_trips_on_its_channel_only(ident):
    for msg in every_message(ident):
        frame = p.encode(msg)
        to_worker = isinstance(msg, (p.Hello, p.Assign, p.Cancel, p.SignReceipt,
                                     p.CosignRelease, p.CosignRefund))
        decode, other = ((p.decode_to_worker, p.decode_to_requester) if to_worker
                         else (p.decode_to_requester, p.decode_to_worker))
        assert decode(frame) == msg
        with pytest.raises(p.ProtocolError):
            other(frame)


def test_an_unescrowed_assignment_reads_as_it_did_before_escrow():
    """A worker that predates escrow refuses unknown fields: an assignment without escrow must
    not carry the field at all."""
    item = WorkItem("r1", [ChatMessage("user", "hi")], 8, 0.7, 0.9, 3)
    frame = p.encode(p.Assign(job=H, shard=2, requester=H, model=H, skin=None, price_per_1k=5,
                              items=[item]))
    assert b"escrow" not in frame
    escrowed = p.encode(p.Assign(job=H, shard=2, requester=H, model=H, skin=None,
                                 price_per_1k=5, items=[item],
                                 escrow=p.EscrowTerms(account=H, multisig=H, amount=1)))
    assert b"escrow" in escrowed


@pytest.mark.parametrize("bad", [
    p.CosignRelease(job=H, account=H, message=b"m" * 1233, requester_sig="00" * 64,
                    receipts=[H]),
    p.CosignRelease(job=H, account=H, message=b"m", requester_sig="00" * 64, receipts=[]),
    p.Cosigned(job=H, account=H, signature="zz" * 64),
])
def test_escrow_messages_out_of_range_are_protocol_errors(bad):
    frame = p.encode(bad)
    with pytest.raises(p.ProtocolError):
        (p.decode_to_requester if isinstance(bad, p.Cosigned) else p.decode_to_worker)(frame)


def test_frames_over_the_limit_are_refused_before_decoding():
    item = WorkItem("r", [ChatMessage("user", "x" * (p.MAX_FRAME_BYTES + 10))], 8)
    frame = p.encode(p.Assign(job=H, shard=0, requester=H, model=H, skin=None, price_per_1k=1,
                              items=[item]))
    with pytest.raises(p.ProtocolError, match="over the"):
        p.decode_to_worker(frame)
    with pytest.raises(p.ProtocolError, match="over the"):
        p.decode_to_worker(p.encode(p.Hello(requester=H)) + b" " * 1024, p.MAX_HELLO_BYTES)


@pytest.mark.parametrize("bad", [
    {"t": "assign", "job": "x", "shard": 0, "requester": H, "model": H, "skin": None,
     "price_per_1k": 1, "items": []},
    {"t": "assign", "job": H, "shard": -1, "requester": H, "model": H, "skin": None,
     "price_per_1k": 1, "items": []},
    {"t": "hello", "requester": H, "extra": 1},
    {"t": "cancel", "job": H.upper(), "shard": 0},
    {"t": "nope"},
    [1, 2, 3],
])
def test_wrong_fields_ranges_and_tags_are_protocol_errors(bad):
    with pytest.raises(p.ProtocolError):
        p.decode_to_worker(msgspec.msgpack.encode(bad))


def test_too_many_items_in_a_shard_is_refused():
    item = {"custom_id": "r", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    frame = msgspec.msgpack.encode({"t": "assign", "job": H, "shard": 0, "requester": H,
                                    "model": H, "skin": None, "price_per_1k": 1,
                                    "items": [item] * (p.MAX_SHARD_ITEMS + 1)})
    with pytest.raises(p.ProtocolError):
        p.decode_to_worker(frame)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.dictionaries(
    st.sampled_from(["t", "job", "shard", "items", "requester", "completions", "receipt"]),
    st.none() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=70) | st.binary(max_size=40)
    | st.sampled_from(["hello", "assign", "sign", "result", "error", "offer"]),
    max_size=6).map(msgspec.msgpack.encode))
@pytest.mark.slow
def test_any_frame_decodes_or_is_a_protocol_error(frame):
    for decode in (p.decode_to_worker, p.decode_to_requester):
        try:
            decode(frame)
        except p.ProtocolError:
            pass


def test_offers_verify_and_tampering_is_caught(ident, tmp_path):
    signed = sign_offer(an_offer(ident), ident)
    assert verify_offer(signed) == signed.offer
    dearer = SignedOffer(msgspec.structs.replace(signed.offer, price_per_1k=1), signed.signature)
    with pytest.raises(OfferError, match="signature"):
        verify_offer(dearer)
    other = load_or_create_identity(tmp_path / "other")
    wrong_key = sign_offer(an_offer(ident, curve_key=other.curve_keypair()[0].hex()), ident)
    with pytest.raises(OfferError, match="transport key"):
        verify_offer(wrong_key)
    stale = sign_offer(an_offer(ident, issued=int(time.time()) - 3 * 86400), ident)
    with pytest.raises(OfferError, match="stale"):
        verify_offer(stale)
    with pytest.raises(OfferError):
        sign_offer(an_offer(ident), other)


def test_fraud_records_are_signed_by_the_requester(ident):
    record = FraudRecord(requester=ident.public_hex, worker=H, job=H, shard=0, model=H,
                         skin=None, item=None, claim=None, first_mismatch=3,
                         reason="token 3: claimed 5, rule gives 6", created=1)
    signed = sign_fraud(record, ident)
    assert verify_fraud(signed)
    forged = msgspec.structs.replace(signed, record=msgspec.structs.replace(record, worker="cd" * 32))
    assert not verify_fraud(forged)


def test_worker_settings_from_worker_toml(tmp_path):
    cfg = tmp_path / "worker.toml"
    cfg.write_text("idle_seconds = 60\ncpu_cap_percent = 40\nrun_on_battery = true\n")
    s = load_worker_settings(cfg, price_per_1k=7)
    assert (s.idle_seconds, s.cpu_cap_percent, s.run_on_battery, s.release_after,
            s.price_per_1k, s.serve) == (60, 40, True, 30, 7, True)
    assert load_worker_settings(tmp_path / "none.toml").idle_seconds == 180
    assert load_worker_settings(tmp_path / "none.toml").require_escrow is False
    cfg.write_text("require_escrow = true\n")
    assert load_worker_settings(cfg).require_escrow is True
    for bad in ("cpu_cap_percent = 0", "nonsense = 1", "idle_seconds = 'x'", "release_after = -1"):
        cfg.write_text(bad + "\n")
        with pytest.raises(SettingsError, match="worker.toml"):
            load_worker_settings(cfg)


def test_away_policy_follows_boinc_defaults():
    policy = AwayPolicy(WorkerSettings())

    def decide(**kw):
        o = dict(now=1000.0, last_input=0.0, minimised=False, other_cpu_percent=5.0,
                 on_battery=False)
        o.update(kw)
        return policy.decide(Observation(**o)).reason
    assert decide() == SERVING
    assert decide(last_input=1000 - 179) == PLAYER_PRESENT
    assert decide(last_input=1000 - 181) == SERVING
    assert decide(last_input=999, minimised=True) == SERVING
    assert decide(other_cpu_percent=30) == BUSY_CPU
    assert decide(on_battery=True) == ON_BATTERY
    off = AwayPolicy(msgspec.structs.replace(policy.settings, serve=False))
    assert off.decide(Observation(1000.0, 0.0, True, 0.0, False)).reason == OFF


def test_switch_gate_releases_after_the_pause_limit():
    gate = SwitchGate(release_after=0.3)
    assert not gate.paused() and gate.wait_resumed(1.0)
    gate.set_serving(False)
    assert gate.paused()
    t0 = time.monotonic()
    assert gate.wait_resumed(0.1) is False  # asked to wait briefly: still paused
    assert gate.wait_resumed(5.0) is False  # the pause limit, counted from the pause, ends it
    assert time.monotonic() - t0 < 1.0
    gate.set_serving(True)
    assert gate.wait_resumed(5.0) and not gate.paused()


def test_switch_gate_tells_its_followers_of_each_change_until_they_leave():
    gate = SwitchGate(release_after=30.0, open_=False)
    heard: list[bool] = []
    leave = gate.on_change(heard.append)
    assert heard == [True]  # its state at once
    gate.set_serving(True)
    gate.set_serving(True)  # no change, nothing told
    gate.set_serving(False)
    assert heard == [True, False, True]
    leave()
    gate.set_serving(True)
    assert heard == [True, False, True] and not gate.paused()
