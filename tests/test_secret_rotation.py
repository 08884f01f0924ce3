"""Rotating DVP_SECRET_KEY with trades in flight (issue 17): a worker restarted with a new key and the old one in
DVP_PREVIOUS_SECRET_KEYS still claims with the secrets the old key sealed; `dvp-relayer keys rotate` re-seals them
so the old key can go. On the two-anvil devnet with real workers' engines and a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from relayer.protocol.states import TradeState
from relayer.secrets import SecretBox, SecretDecryptError, generate_key
from relayer.store import Store
from tests.relayer_kit import Net, close_engine, drive, fresh_db, worker_env


async def _st_locked(net: Net, db: int, key: str) -> str:
    """A trade whose secret a worker with `key` sealed, its ST lock confirmed; the worker then stops."""
    engine = await net.engine([net.seller, net.buyer], db=db, secret_key=key)
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], until={TradeState.ST_LOCKED}, timeout=30))[tid] == TradeState.ST_LOCKED
        return tid
    finally:
        await close_engine(engine)


def test_a_sealed_secret_names_its_key_and_only_a_configured_key_opens_it():
    old, new = generate_key(), generate_key()
    sealed = SecretBox(old).seal(b"s" * 32, "0xab")
    assert SecretBox.sealed_with(sealed) == SecretBox(old).current_id and old not in sealed
    assert SecretBox(new, [old]).open(sealed, "0xab") == b"s" * 32
    try:
        SecretBox(new).open(sealed, "0xab")
        raise AssertionError("opened without the key")
    except SecretDecryptError as exc:
        assert SecretBox(old).current_id in str(exc)
    resealed = SecretBox(new, [old]).reseal(sealed, "0xab")
    assert resealed is not None and SecretBox(new).open(resealed, "0xab") == b"s" * 32
    assert SecretBox(new).reseal(resealed, "0xab") is None


async def _sealed_by_an_old_key(net: Net) -> tuple[str, str, int, Store, str]:
    """(old key, new key, database, its store, trade id): a trade in flight whose secret the old key sealed."""
    old, new, db = generate_key(), generate_key(), fresh_db()
    return old, new, db, Store.from_url(f"redis://127.0.0.1:{net.redis_port}/{db}"), await _st_locked(net, db, old)


async def test_a_worker_restarted_with_a_new_key_settles_the_trades_the_old_key_sealed(net: Net):
    old, new, db, store, tid = await _sealed_by_an_old_key(net)
    engine = await net.engine([net.seller, net.buyer], db=db, secret_key=new, previous_secret_keys=old)
    try:
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
    finally:
        await close_engine(engine)
    await store.close()


async def test_keys_rotate_reseals_an_open_trade_so_the_old_key_can_go(net: Net):
    old, new, db, store, tid = await _sealed_by_an_old_key(net)
    sealed_before = (await store.get(tid)).fields["secret"]
    settings = net.settings([net.seller, net.buyer], db=db, secret_key=new, previous_secret_keys=old)
    exe = Path(sys.executable).with_name("dvp-relayer")
    out = subprocess.run([str(exe), "keys", "rotate"], env=worker_env(settings), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["resealed"] == 1 and report["unopened"] == [] and report["key_id"] == SecretBox(new).current_id
    assert old not in out.stdout + out.stderr and new not in out.stdout + out.stderr
    sealed_after = (await store.get(tid)).fields["secret"]
    assert sealed_after != sealed_before and SecretBox.sealed_with(sealed_after) == SecretBox(new).current_id
    assert "secret_resealed" in [e["event"] for e in await store.audit(tid)]
    engine = await net.engine([net.seller, net.buyer], db=db, secret_key=new)  # the old key is gone
    try:
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
    finally:
        await close_engine(engine)
    await store.close()
