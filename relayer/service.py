"""Build a ready-to-run Engine from Settings (used by the CLI, the demo and the tests)."""

from __future__ import annotations

from adapters.evm import EvmChain
from adapters.progmat_coin import ProgmatCoinLedger
from adapters.st_chain import StChainLedger
from relayer.config import Settings
from relayer.engine import Engine
from relayer.errors import ConfigError
from relayer.secrets import SecretBox
from relayer.store import Store


def store_for(settings: Settings) -> Store:
    """Redis through Sentinel when DVP_REDIS_SENTINELS is set, else DVP_REDIS_URL."""
    if settings.redis_sentinels:
        return Store.from_sentinels(settings.sentinel_addresses(), settings.redis_sentinel_master, settings.redis_db)
    return Store.from_url(settings.redis_url)


def build_engine(settings: Settings, store: Store | None = None) -> Engine:
    zero = "0x" + "0" * 40
    missing = [var for var, value in (
        ("DVP_ST_ESCROW", settings.st_escrow.replace(zero, "")), ("DVP_SC_ESCROW", settings.sc_escrow.replace(zero, "")),
        ("DVP_SECRET_KEY", settings.secret_key.get_secret_value()), ("DVP_PTS_DOMAIN_SALT", settings.pts_domain_salt),
    ) if not value]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set (see .env.example; `dvp-relayer keygen` makes a secret "
                          "key; `dvp-relayer devnet up` writes a complete devnet.env)")
    settings.domain_salt()
    accounts = settings.accounts()
    st_chain = EvmChain("st", settings.st_urls(), request_timeout=settings.rpc_timeout)
    same_ledger = settings.sc_urls() == settings.st_urls()
    sc_chain = st_chain if same_ledger else EvmChain("sc", settings.sc_urls(), request_timeout=settings.rpc_timeout)
    fee_cap = int(settings.max_priority_fee_gwei * 10**9)
    st = StChainLedger(st_chain, settings.st_escrow, accounts, dvp=settings.dvp_contract, max_priority_fee_wei=fee_cap)
    sc = ProgmatCoinLedger(sc_chain, settings.sc_escrow, accounts, max_priority_fee_wei=fee_cap)
    if same_ledger:
        sc.share_senders(st)  # one nonce ledger per account per chain, whichever leg sends
    return Engine(settings, store or store_for(settings), st, sc, SecretBox(settings.secret_key.get_secret_value()))


async def close_engine(engine: Engine) -> None:
    await engine.st.ledger.chain.close()
    if engine.sc.ledger.chain is not engine.st.ledger.chain:
        await engine.sc.ledger.chain.close()
    await engine.store.close()
