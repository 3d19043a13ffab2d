import msgspec
import pytest

from common.identity import load_or_create_identity
from swarm.jobs.receipt import (Receipt, ReceiptBody, ReceiptError, amount_for, receipt_id,
                                sign_body, verify_receipt)


def _parties(tmp_path):
    return load_or_create_identity(tmp_path / "r"), load_or_create_identity(tmp_path / "w")


def _receipt(tmp_path, **changes):
    req, wrk = _parties(tmp_path)
    fields = dict(job="ab" * 32, shard=3, requester=req.public_hex, worker=wrk.public_hex,
                  model="cd" * 32, skin=None, tokens_in=120, tokens_out=64, price_per_1k=2500,
                  amount=amount_for(120, 64, 2500))
    fields.update(changes)
    body = ReceiptBody(**fields)
    return Receipt(body=body, requester_sig=sign_body(body, req), worker_sig=sign_body(body, wrk))


def test_amount_rounds_up_to_a_whole_unit():
    assert amount_for(120, 64, 2500) == 460
    assert amount_for(1, 0, 1) == 1 and amount_for(0, 0, 999) == 0
    with pytest.raises(ReceiptError):
        amount_for(-1, 0, 5)


def test_a_signed_receipt_verifies_and_its_id_is_stable(tmp_path):
    r = _receipt(tmp_path)
    assert verify_receipt(r) == receipt_id(r.body)
    again = msgspec.json.decode(msgspec.json.encode(r), type=Receipt)
    assert verify_receipt(again) == receipt_id(r.body)


@pytest.mark.parametrize("change, message", [
    (dict(amount=461), "not what its tokens and price give"),
    (dict(shard=-1), "negative"),
    (dict(job="zz" * 32), "not 64 hex"),
    (dict(skin="12"), "not a skin id"),
])
def test_bad_bodies_are_refused(tmp_path, change, message):
    with pytest.raises(ReceiptError, match=message):
        verify_receipt(_receipt(tmp_path, **change))


def test_tampered_or_one_sided_receipts_are_refused(tmp_path):
    r = _receipt(tmp_path)
    tampered = msgspec.structs.replace(r, body=msgspec.structs.replace(r.body, tokens_out=65,
                                                                       amount=amount_for(120, 65, 2500)))
    with pytest.raises(ReceiptError, match="requester's signature"):
        verify_receipt(tampered)
    swapped = msgspec.structs.replace(r, worker_sig=r.requester_sig)
    with pytest.raises(ReceiptError, match="worker's signature"):
        verify_receipt(swapped)
