"""Build a ready-to-run Engine from Settings (used by the CLI, the demo and the tests)."""

from __future__ import annotations

from adapters.evm import EvmChain
from adapters.htlc import HtlcLedger
from adapters.progmat_coin import ProgmatCoinLedger
from adapters.st_chain import StChainLedger
from relayer.config import Settings, gwei_to_wei
from relayer.engine import Engine
from relayer.errors import ConfigError
from relayer.follow import ChainSide
from relayer.store import Store


def store_for(settings: Settings) -> Store:
    """Redis through Sentinel when DVP_REDIS_SENTINELS is set, else DVP_REDIS_URL."""
    if settings.redis_sentinels:
        store = Store.from_sentinels(settings.sentinel_addresses(), settings.redis_sentinel_master, settings.redis_db)
    else:
        store = Store.from_url(settings.redis_url)
    store.min_replicas, store.replica_wait_ms = settings.redis_min_replicas, settings.redis_replica_wait_ms
    store.webhooks = bool(settings.webhook_url)
    return store


def build_engine(settings: Settings, store: Store | None = None) -> Engine:
    """An engine following every configured ledger (settings.ledger_configs()); ConfigError when one cannot work."""
    zero = "0x" + "0" * 40
    ledgers = settings.ledger_configs()
    missing = [var for var, value in (
        *((f"DVP_{lg.name.upper()}_ESCROW" if lg.name in ("st", "sc") else f"escrow of ledger {lg.name}",
           lg.escrow.replace(zero, "")) for lg in ledgers),
        ("DVP_SECRET_KEY", settings.secret_key.get_secret_value()), ("DVP_PTS_DOMAIN_SALT", settings.pts_domain_salt),
    ) if not value]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set (see .env.example; `dvp-relayer keygen` makes a secret "
                          "key; `dvp-relayer devnet up` writes a complete devnet.env)")
    settings.domain_salt()
    accounts = settings.accounts()
    fee_cap = int(settings.max_priority_fee_gwei * 10**9)
    # one connection (and one nonce ledger per account) per chain: ledgers on one chain id, or on the same URLs,
    # share it, so an ST ledger and a coin ledger on one chain never sign two transactions with one nonce
    chains: list[tuple[int | None, tuple[str, ...], EvmChain]] = []
    first_ledger: dict[int, HtlcLedger] = {}  # id(chain) -> the first ledger on it
    sides = []
    for lg in ledgers:
        lg = lg.model_copy(update={"confirmations": lg.confirmations or settings.confirmations,
                                   "block_time": lg.block_time or settings.block_time})
        urls = tuple(lg.rpc_urls)
        chain = next((c for cid, u, c in chains if u == urls or (cid is not None and cid == lg.chain_id)), None)
        if chain is None:
            chain = EvmChain(lg.name, list(urls), request_timeout=settings.rpc_timeout,
                             slow_after=settings.rpc_slow_after or None, fee_mode=lg.fee_mode,
                             gas_price_wei=gwei_to_wei(lg.gas_price_gwei), auth_header=settings.rpc_auth(lg))
            chains.append((lg.chain_id, urls, chain))
        ledger: HtlcLedger
        if lg.role == "st":
            ledger = StChainLedger(chain, lg.escrow, accounts, dvp=lg.dvp_contract, max_priority_fee_wei=fee_cap,
                                   max_fee_wei=gwei_to_wei(settings.max_fee_gwei))
        else:
            ledger = ProgmatCoinLedger(chain, lg.escrow, accounts, max_priority_fee_wei=fee_cap,
                                       max_fee_wei=gwei_to_wei(settings.max_fee_gwei))
        if id(chain) in first_ledger:
            ledger.share_senders(first_ledger[id(chain)])  # one nonce ledger per account per chain, whichever leg sends
        else:
            first_ledger[id(chain)] = ledger
        sides.append(ChainSide(lg.name, ledger, lg))
    if settings.webhook_url and not settings.webhook_secret.get_secret_value():
        raise ConfigError("DVP_WEBHOOK_SECRET must be set with DVP_WEBHOOK_URL (the receiver checks X-DVP-Signature "
                          "with it)")
    return Engine(settings, store or store_for(settings), sides, settings.secret_box())


async def close_engine(engine: Engine) -> None:
    for chain in {id(s.ledger.chain): s.ledger.chain for s in engine.sides}.values():
        await chain.close()
    await engine.store.close()
