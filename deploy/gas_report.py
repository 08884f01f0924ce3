"""Measure the escrow's gas per operation on a fresh anvil, in steady state, and write contracts_sol/gas-report.json.

Steady state: the escrow already holds a balance of the token (a ballast swap stays locked), receivers already
hold a balance, the sender's allowance to the escrow is unlimited, and a signer's lock nonce is not its first.
Token: a plain OpenZeppelin ERC-20 (the baseline public HTLC figures use), and our permissioned SecurityToken.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from eth_account import Account

from adapters.contracts import dvp_typed_data, encode_call, lock_typed_data, swap_id
from adapters.evm import EvmChain, TxSender
from deploy.toolchain import CONTRACTS_DIR
from deploy.deployer import MAX_UINT256, deploy
from deploy.processes import DEV_MNEMONIC, AnvilProcess, free_port

REPORT_FILE = CONTRACTS_DIR / "gas-report.json"
E = "HashedTimelockEscrow"
BATCH_SIZES = (10, 50)

Account.enable_unaudited_hdwallet_features()


def _accounts(n: int) -> list[Any]:
    return [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)]


def claim_args(swap: tuple, preimage: bytes) -> tuple:
    """claim() arguments from a Swap tuple (tradeId, sender, token, amount, receiver, hashlock, timelock)."""
    trade_id, sender, token, amount, receiver, _hashlock, timelock = swap
    return (preimage, swap_id(sender, trade_id), token, amount, receiver, timelock)


async def _measure_token(chain: EvmChain, accts: list[Any], token_kind: str) -> dict[str, Any]:
    deployer, seller, buyer, relayer = accts[:4]
    receivers = accts[4:]  # for distinct-receiver batches
    tx = {a.address: TxSender(chain, a) for a in accts}
    escrow = await deploy(tx[deployer.address], E)
    if token_kind == "PlainToken":
        token = await deploy(tx[deployer.address], "PlainToken")
        await tx[deployer.address].transact(token, encode_call("PlainToken", "mint", seller.address, 10**30))
        for r in [buyer, *receivers]:
            await tx[deployer.address].transact(token, encode_call("PlainToken", "mint", r.address, 1))
    else:
        token = await deploy(tx[deployer.address], "SecurityToken", "Bond", "BND", deployer.address)
        holders = [escrow, seller.address, buyer.address] + [r.address for r in receivers]
        await tx[deployer.address].transact(token, encode_call("SecurityToken", "setAllowed", holders, True))
        await tx[deployer.address].transact(token, encode_call("SecurityToken", "issue", seller.address, 10**30))
        for r in [buyer, *receivers]:
            await tx[deployer.address].transact(token, encode_call("SecurityToken", "issue", r.address, 1))
    await tx[seller.address].transact(token, encode_call("PlainToken", "approve", escrow, MAX_UINT256))
    s_tx, r_tx = tx[seller.address], tx[relayer.address]

    def terms(receiver: str, ttl: int, now: int) -> tuple[tuple, bytes]:
        secret = os.urandom(32)
        return (os.urandom(32), token, 1000, receiver, hashlib.sha256(secret).digest(), now + ttl), secret

    async def lock_one(receiver: str, ttl: int = 3600) -> tuple[tuple, bytes, int]:
        t, secret = terms(receiver, ttl, await chain.now())
        rc = await s_tx.transact(escrow, encode_call(E, "lockTokens", *t))
        return (t[0], seller.address, *t[1:]), secret, int(rc["gasUsed"])

    # ballast: keeps the escrow's balance non-zero, and warms the signer nonce
    await lock_one(buyer.address, ttl=10**8)
    now = await chain.now()
    t, _ = terms(buyer.address, 10**8, now)
    sig = Account.sign_typed_data(seller.key, full_message=lock_typed_data(escrow, chain.chain_id, t, 0, now + 600))
    await r_tx.transact(escrow, encode_call(E, "lockWithSig", t, seller.address, now + 600, sig.signature))

    fig: dict[str, Any] = {}
    swap, secret, fig["lock"] = await lock_one(buyer.address)
    fig["claim"] = int((await r_tx.transact(escrow, encode_call(E, "claimTokens", *claim_args(swap, secret))))["gasUsed"])
    swap, _, _ = await lock_one(buyer.address, ttl=30)
    await chain.rpc("evm_increaseTime", [31])
    await chain.rpc("evm_mine", [])
    fig["refund"] = int((await r_tx.transact(escrow, encode_call(E, "refund", swap)))["gasUsed"])
    now = await chain.now()
    t, _ = terms(buyer.address, 3600, now)
    sig = Account.sign_typed_data(seller.key, full_message=lock_typed_data(escrow, chain.chain_id, t, 1, now + 600))
    rc = await r_tx.transact(escrow, encode_call(E, "lockWithSig", t, seller.address, now + 600, sig.signature))
    fig["lock_with_sig"] = int(rc["gasUsed"])
    fig["lock_plus_claim"] = fig["lock"] + fig["claim"]

    for n in BATCH_SIZES:
        for mode in ("same_receiver", "distinct_receivers"):
            now = await chain.now()
            rcv = [buyer.address] * n if mode == "same_receiver" else [receivers[i % len(receivers)].address
                                                                        for i in range(n)]
            batch = [terms(rcv[i], 3600, now) for i in range(n)]
            rc = await s_tx.transact(escrow, encode_call(E, "lockBatch", [b[0] for b in batch]))
            fig[f"lock_batch_{n}_{mode}_per_swap"] = int(rc["gasUsed"]) // n
            claims = [claim_args((b[0][0], seller.address, *b[0][1:]), b[1]) for b in batch]
            rc = await r_tx.transact(escrow, encode_call(E, "claimBatch", claims))
            fig[f"claim_batch_{n}_{mode}_per_swap"] = int(rc["gasUsed"]) // n
        now = await chain.now()
        batch = [terms(buyer.address, 30, now) for _ in range(n)]
        await s_tx.transact(escrow, encode_call(E, "lockBatch", [b[0] for b in batch]))
        await chain.rpc("evm_increaseTime", [31])
        await chain.rpc("evm_mine", [])
        await chain.rpc("evm_mine", [])
        swaps = [(b[0][0], seller.address, *b[0][1:]) for b in batch]
        rc = await r_tx.transact(escrow, encode_call(E, "refundBatch", swaps))
        fig[f"refund_batch_{n}_per_swap"] = int(rc["gasUsed"]) // n
    return fig


async def _measure_dvp(chain: EvmChain, accts: list[Any]) -> dict[str, Any]:
    """Same-ledger AtomicDvP: one transaction per trade (or per batch), both legs PlainToken, steady state."""
    deployer, seller, buyer, relayer = accts[:4]
    tx = {a.address: TxSender(chain, a) for a in accts[:4]}
    dvp = await deploy(tx[deployer.address], "AtomicDvP")
    st = await deploy(tx[deployer.address], "PlainToken")
    sc = await deploy(tx[deployer.address], "PlainToken")
    for token, holder in ((st, seller), (sc, buyer)):
        await tx[deployer.address].transact(token, encode_call("PlainToken", "mint", holder.address, 10**30))
        other = buyer if holder is seller else seller
        await tx[deployer.address].transact(token, encode_call("PlainToken", "mint", other.address, 1))
        await tx[holder.address].transact(token, encode_call("PlainToken", "approve", dvp, MAX_UINT256))

    async def entries(n: int) -> list[tuple]:
        deadline = await chain.now() + 3600
        out = []
        for _ in range(n):
            t = (os.urandom(32), seller.address, buyer.address, st, 10, sc, 1000, deadline)
            msg = dvp_typed_data(dvp, chain.chain_id, t)
            out.append((t, Account.sign_typed_data(seller.key, full_message=msg).signature,
                        Account.sign_typed_data(buyer.key, full_message=msg).signature))
        return out

    r_tx = tx[relayer.address]
    fig: dict[str, Any] = {}
    for e in await entries(2):  # the first warms the parties' balances of the other token
        fig["settle"] = int((await r_tx.transact(dvp, encode_call("AtomicDvP", "settle", *e)))["gasUsed"])
    for n in BATCH_SIZES:
        rc = await r_tx.transact(dvp, encode_call("AtomicDvP", "settleBatch", await entries(n)))
        fig[f"settle_batch_{n}_per_trade"] = int(rc["gasUsed"]) // n
    return fig


async def measure() -> dict[str, Any]:
    """Run every measurement on a throw-away automining anvil and return the report."""
    node = AnvilProcess(chain_id=31337, port=free_port()).start()
    chain = EvmChain("gas", [node.url])
    try:
        await chain.connect()
        accts = _accounts(10)
        report: dict[str, Any] = {
            "conditions": "anvil 1.7.1, solc 0.8.37 (viaIR, 1e6 runs, cancun); steady state: escrow and receivers "
            "already hold the token, unlimited allowance, signer nonce not first; gasUsed per transaction "
            "(batch figures divided by the batch size, after the 20% refund cap)",
            "tokens": {},
        }
        for kind in ("PlainToken", "SecurityToken"):
            report["tokens"][kind] = await _measure_token(chain, accts, kind)
        report["same_ledger_dvp"] = await _measure_dvp(chain, accts)
        return report
    finally:
        await chain.close()
        node.stop()


def write_report(path: Path = REPORT_FILE) -> dict[str, Any]:
    report = asyncio.run(measure())
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(write_report(), indent=2))
