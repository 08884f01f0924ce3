"""Configuration from the environment (prefix DVP_) and an optional .env file; documented in .env.example."""

from __future__ import annotations

import os

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from relayer.protocol.rules import TimingPolicy


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class Settings(BaseSettings):
    """Every knob of a relayer worker. Secrets are SecretStr: they never print."""

    model_config = SettingsConfigDict(env_prefix="DVP_", env_file=os.environ.get("DVP_ENV_FILE", ".env"),
                                      extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: str = Field("", description="comma-separated host:port of Redis Sentinels (overrides redis_url)")
    redis_sentinel_master: str = Field("dvp", description="the master name the Sentinels monitor")
    redis_db: int = 0

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        out = []
        for item in _split(self.redis_sentinels):
            host, _, port = item.rpartition(":")
            out.append((host, int(port)))
        return out

    st_rpc_url: str = Field("http://127.0.0.1:8545", description="ST chain RPC (primary)")
    st_rpc_standby_urls: str = Field("", description="comma-separated standby RPC URLs for the ST chain")
    st_ws_url: str = Field("", description="optional WebSocket URL: new-block notifications wake the worker at once")
    st_chain_id: int | None = None
    st_escrow: str = ""
    st_tokens: str = Field("", description="comma-separated ST token addresses this relayer settles")
    st_start_block: int = 0

    sc_rpc_url: str = Field("http://127.0.0.1:8546", description="coin ledger RPC (primary)")
    sc_rpc_standby_urls: str = ""
    sc_ws_url: str = ""
    sc_chain_id: int | None = None
    sc_escrow: str = ""
    sc_tokens: str = ""
    sc_start_block: int = 0

    dvp_contract: str = Field("", description="AtomicDvP address on the ST chain: when the SC is on that same chain "
                              "too, trades settle through it in one transaction (no HTLC)")

    trusted_pts_signers: str = Field("", description="comma-separated addresses of PTS keys we accept")
    pts_domain_salt: str = Field("", description="0x + 32 bytes: the `salt` of this deployment's trade-instruction "
                                 "EIP-712 domain; the PTS signs with the same value (docs/trade-instruction.md)")
    party_keys: SecretStr = Field(SecretStr(""), description="comma-separated private keys of accounts we act for")
    secret_key: SecretStr = Field(SecretStr(""), description="AES-256 key (url-safe base64) for secrets at rest")

    confirmations: int = Field(1, ge=1)
    block_time: float = Field(1.0, gt=0)
    inclusion_delay: float = 3.0
    margin: float = 5.0
    max_clock_skew: float = Field(5.0, description="bound on |ST block time - SC block time| used in Δ")
    st_lock_duration: int = 300
    poll_interval: float = 0.2
    lease_ttl: float = Field(5.0, gt=0, description="account lease TTL (s): a standby worker takes over after it")
    batch_max: int = Field(50, ge=1, description="most swaps per batch transaction (1 = batching off)")
    rpc_timeout: float = 5.0
    max_priority_fee_gwei: float = Field(200.0, gt=0, description="the most the seller's reveal (SC claim) tips to "
                                         "win inclusion over a congested mempool")
    log_level: str = "INFO"

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, description="HTTP API + dashboard port; 0 disables the API in this worker")
    api_tokens: SecretStr = Field(SecretStr(""), description="comma-separated bearer tokens for POST /v1/trades")
    api_read_auth: bool = Field(False, description="require a bearer token on the read endpoints too")
    api_max_lag_blocks: int = Field(20, description="readiness fails when a follower lags more blocks than this")

    def api_token_list(self) -> list[str]:
        return _split(self.api_tokens.get_secret_value())

    def st_urls(self) -> list[str]:
        return [self.st_rpc_url, *_split(self.st_rpc_standby_urls)]

    def sc_urls(self) -> list[str]:
        return [self.sc_rpc_url, *_split(self.sc_rpc_standby_urls)]

    def domain_salt(self) -> bytes:
        """DVP_PTS_DOMAIN_SALT as 32 bytes; ConfigError when missing or malformed."""
        from relayer.errors import ConfigError

        raw = self.pts_domain_salt.strip()
        if not raw:
            raise ConfigError("DVP_PTS_DOMAIN_SALT must be set: the 32-byte venue id (0x + 64 hex) your PTS signs "
                              "trade instructions with (docs/trade-instruction.md)")
        try:
            salt = bytes.fromhex(raw.removeprefix("0x"))
        except ValueError:
            salt = b""
        if not raw.startswith("0x") or len(salt) != 32:
            raise ConfigError("DVP_PTS_DOMAIN_SALT must be 0x followed by 64 hex digits (32 bytes)")
        return salt

    def trusted_signers(self) -> set[str]:
        return {to_checksum_address(a) for a in _split(self.trusted_pts_signers)}

    def st_token_set(self) -> set[str]:
        return {to_checksum_address(a) for a in _split(self.st_tokens)}

    def sc_token_set(self) -> set[str]:
        return {to_checksum_address(a) for a in _split(self.sc_tokens)}

    def accounts(self) -> dict[str, LocalAccount]:
        """address -> signer, for every configured party key."""
        accts = [Account.from_key(k) for k in _split(self.party_keys.get_secret_value())]
        return {a.address: a for a in accts}

    def timing(self) -> TimingPolicy:
        return TimingPolicy(
            confirmations=self.confirmations,
            block_time=self.block_time,
            inclusion_delay=self.inclusion_delay,
            margin=self.margin,
            max_clock_skew=self.max_clock_skew,
            st_lock_duration=self.st_lock_duration,
        )
