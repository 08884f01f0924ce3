"""Configuration from the environment (prefix DVP_) and an optional .env file; documented in .env.example.

`load_settings()` is how commands read it: a bad value is one ConfigError line naming the variable and where it
came from (the environment or the env file), never a traceback, and never the value of a secret.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from eth_utils import is_checksum_address, to_checksum_address
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.signers import DEFAULT_PKCS11_MODULE, HashSigner, SignerDefaults, SignerError, env_signer, parse_reference
from relayer.errors import ConfigError
from relayer.protocol.rules import TimingPolicy
from relayer.secrets import SecretBox

# chain ids of local devnets (anvil and hardhat, geth --dev and ganache, `dvp-relayer devnet up`, the chaos run's
# three chains): raw env: keys against any other chain id get a warning at start
DEVNET_CHAIN_IDS = frozenset({31337, 1337, 17001, 17002, 17003, 18101, 18102, 18103})
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_urls(value: str, schemes: tuple[str, ...]) -> str:
    for i, url in enumerate(_split(value), 1):
        if not url.startswith(tuple(f"{s}://" for s in schemes)) or len(url.split("://", 1)[1]) == 0:
            which = f"entry {i}" if "," in value else "the URL"
            raise ValueError(f"{which} must start with {' or '.join(s + '://' for s in schemes)} (got {url!r})")
    return value


def _check_addresses(value: str) -> str:
    for i, item in enumerate(_split(value), 1):
        if not _ADDRESS.match(item):
            raise ValueError(f"entry {i} ({item!r}) is not a 0x-prefixed 20-byte hex address")
        if item[2:] != item[2:].lower() and item[2:] != item[2:].upper() and not is_checksum_address(item):
            raise ValueError(f"entry {i} ({item!r}) has a bad EIP-55 checksum")
    return value


# what each API role may do: read (GETs), submit (read + every POST), operator (everything, today the same)
API_ROLES: dict[str, frozenset[str]] = {"read": frozenset({"read"}), "submit": frozenset({"read", "submit"}),
                                        "operator": frozenset({"read", "submit", "operator"})}


def gwei_to_wei(gwei: float | None) -> int | None:
    """A gas price in gwei as wei (rounded: 8.2 gwei is 8,200,000,000 wei, not one less); None stays None."""
    return None if gwei is None else round(gwei * 10**9)


class LedgerConfig(BaseModel):
    """One ledger the relayer follows: a `[[ledgers]]` table of the config file (DVP_CONFIG_FILE), or, without
    one, the ledger named "st" or "sc" built from the DVP_ST_* / DVP_SC_* variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="labels logs and metrics, keys its Redis cursor")
    role: Literal["st", "sc"] = Field(description="st: a security-token platform; sc: a coin ledger")
    chain_id: int | None = Field(None, gt=0, description="trades name it as stChainId / scChainId; the RPC must "
                                 "serve it (unset: learned on connect, single-pair deployments only)")
    rpc_urls: list[str] = Field(min_length=1, description="primary RPC first, then standbys")
    ws_url: str = Field("", description="optional WebSocket URL: new blocks wake the worker at once")
    rpc_auth_env: str = Field("", pattern=r"^([A-Z_][A-Z0-9_]*)?$", description="name of the environment variable "
                              "holding the Authorization header value for its RPC and WebSocket URLs (Bearer …, "
                              "Basic …): the secret stays out of the file")
    escrow: str = Field(description="the HTLC escrow contract")
    tokens: list[str] = Field(default_factory=list, description="token addresses this relayer settles on it")
    start_block: int = Field(0, ge=0, description="where the first follow starts (the escrow's deploy block)")
    confirmations: int | None = Field(None, ge=1, description="k for this chain (unset: DVP_CONFIRMATIONS)")
    block_time: float | None = Field(None, gt=0, description="seconds per block (unset: DVP_BLOCK_TIME)")
    dvp_contract: str = Field("", description="AtomicDvP on this ST chain (same-ledger trades in one transaction)")
    fee_mode: Literal["eip1559", "legacy"] = Field("eip1559", description="eip1559: type-2 transactions; legacy: "
                                                   "type-0 with a gas price (GoQuorum, Besu QBFT/IBFT)")
    gas_price_gwei: float | None = Field(None, ge=0, description="legacy fee mode: a fixed gas price, 0 allowed "
                                         "(unset: the node's eth_gasPrice)")
    finality: Literal["confirmations", "finalized"] = Field("confirmations", description="when an event is final: "
                                                            "k blocks deep, or at the node's `finalized` block "
                                                            "(then set confirmations to its usual lag, for Δ)")
    evm_version: Literal["cancun", "london"] = Field("cancun", description="the EVM the chain runs: which "
                                                     "compiled escrow `dvp-relayer deploy` puts there (london: no "
                                                     "PUSH0 or later opcodes, for pre-Shanghai chains)")

    @model_validator(mode="after")
    def _fees(self) -> LedgerConfig:
        if self.gas_price_gwei is not None and self.fee_mode != "legacy":
            raise ValueError("gas_price_gwei applies to fee_mode = \"legacy\" only")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v == "redis":
            raise ValueError('"redis" is reserved (the readiness check of Redis has that name)')
        return v

    @field_validator("rpc_urls")
    @classmethod
    def _rpc(cls, v: list[str]) -> list[str]:
        return [_check_urls(u, ("http", "https")) for u in v]

    @field_validator("ws_url")
    @classmethod
    def _ws(cls, v: str) -> str:
        return _check_urls(v, ("ws", "wss"))

    @field_validator("escrow", "dvp_contract")
    @classmethod
    def _address(cls, v: str) -> str:
        return _check_addresses(v)

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        _check_addresses(",".join(v))
        return v

    def token_set(self) -> set[str]:
        return {to_checksum_address(a) for a in self.tokens}


class LedgersFile(BaseModel):
    """The config file: the ledgers, each named once, no two of one role on one chain id."""

    model_config = ConfigDict(extra="forbid")

    ledgers: list[LedgerConfig] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct(self) -> LedgersFile:
        names = [lg.name for lg in self.ledgers]
        if dup := {n for n in names if names.count(n) > 1}:
            raise ValueError(f"ledger names must be distinct: {', '.join(sorted(dup))} appears more than once")
        keys = [(lg.role, lg.chain_id) for lg in self.ledgers]
        if len(self.ledgers) > 2 and any(lg.chain_id is None for lg in self.ledgers):
            raise ValueError("with more than two ledgers each needs its chain_id (trades are routed by it)")
        if dup_keys := {k for k in keys if keys.count(k) > 1 and k[1] is not None}:
            role, chain_id = sorted(dup_keys)[0]
            raise ValueError(f"two {role} ledgers on chain id {chain_id}: a trade could not be routed")
        for role in ("st", "sc"):
            if not any(lg.role == role for lg in self.ledgers):
                raise ValueError(f"no ledger with role = \"{role}\"")
        return self


class Settings(BaseSettings):
    """Every knob of a relayer worker. Secrets are SecretStr: they never print."""

    # env_ignore_empty: `DVP_ST_CHAIN_ID=` (as .env.example has it) means "not set", not "an invalid integer"
    model_config = SettingsConfigDict(env_prefix="DVP_", env_file=os.environ.get("DVP_ENV_FILE", ".env"),
                                      extra="ignore", env_ignore_empty=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: str = Field("", description="comma-separated host:port of Redis Sentinels (overrides redis_url)")
    redis_sentinel_master: str = Field("dvp", description="the master name the Sentinels monitor")
    redis_db: int = 0
    redis_min_replicas: int = Field(0, ge=0, description="replicas that must acknowledge an accepted trade (Redis "
                                    "WAIT) before intake answers 202; pair it with min-replicas-to-write on the master")
    redis_replica_wait_ms: int = Field(1000, ge=1, description="how long intake waits for those acknowledgements "
                                       "before answering 503 not_replicated")

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        out = []
        for item in _split(self.redis_sentinels):
            host, _, port = item.rpartition(":")
            out.append((host, int(port)))
        return out

    st_rpc_url: str = Field("http://127.0.0.1:8545", description="ST chain RPC (primary)")
    st_rpc_standby_urls: str = Field("", description="comma-separated standby RPC URLs for the ST chain")
    st_ws_url: str = Field("", description="optional WebSocket URL: new-block notifications wake the worker at once")
    st_rpc_auth: SecretStr = Field(SecretStr(""), description="Authorization header value for the ST chain's RPC "
                                   "and WebSocket URLs (a node provider's `Bearer …` or `Basic …`)")
    st_chain_id: int | None = None
    st_escrow: str = ""
    st_tokens: str = Field("", description="comma-separated ST token addresses this relayer settles")
    st_start_block: int = 0

    sc_rpc_url: str = Field("http://127.0.0.1:8546", description="coin ledger RPC (primary)")
    sc_rpc_standby_urls: str = ""
    sc_ws_url: str = ""
    sc_rpc_auth: SecretStr = Field(SecretStr(""), description="as DVP_ST_RPC_AUTH, for the coin ledger")
    sc_chain_id: int | None = None
    sc_escrow: str = ""
    sc_tokens: str = ""
    sc_start_block: int = 0

    config_file: str = Field("", description="TOML file with the [[ledgers]] to follow (any number); without it "
                             "the DVP_ST_* and DVP_SC_* values are the one ST chain and the one coin ledger")

    dvp_contract: str = Field("", description="AtomicDvP address on the ST chain: when the SC is on that same chain "
                              "too, trades settle through it in one transaction (no HTLC)")

    trusted_pts_signers: str = Field("", description="comma-separated addresses of PTS keys we accept")
    pts_domain_salt: str = Field("", description="0x + 32 bytes: the `salt` of this deployment's trade-instruction "
                                 "EIP-712 domain; the PTS signs with the same value (docs/trade-instruction.md)")
    party_keys: SecretStr = Field(SecretStr(""), description="comma-separated raw private keys of accounts we act "
                                  "for: a devnet only (same as env: signers)")
    signers: SecretStr = Field(SecretStr(""), description="comma-separated signer references, one per account we "
                               "act for: pkcs11:token=T;object=LABEL, keystore:/path.json, env:0x… (devnet)")
    holder_signed: str = Field("", description="comma-separated accounts whose locks their holders authorise "
                               "(EIP-712, POST /v1/trades/{id}/authorizations): this relayer holds no key of them "
                               "and submits the lock from an account it holds")
    pkcs11_module: str = Field(DEFAULT_PKCS11_MODULE, description="PKCS#11 module for pkcs11: signers that name none")
    pkcs11_pin_file: str = Field("", description="file holding the HSM user PIN, for pkcs11: signers without "
                                 "pin-source=")
    keystore_passphrase_file: str = Field("", description="file holding the passphrase of keystore: signers "
                                          "without passphrase-file=")
    secret_key: SecretStr = Field(SecretStr(""), description="AES-256 key (url-safe base64) for secrets at rest")
    previous_secret_keys: SecretStr = Field(SecretStr(""), description="comma-separated older DVP_SECRET_KEY "
                                            "values: they still open the secrets they sealed (rotation; "
                                            "`dvp-relayer keys rotate` re-seals under the current key)")

    confirmations: int = Field(1, ge=1)
    block_time: float = Field(1.0, gt=0)
    inclusion_delay: float = 3.0
    margin: float = 5.0
    max_clock_skew: float = Field(5.0, description="bound on |ST block time - SC block time| used in Δ")
    st_lock_duration: int = 300
    poll_interval: float = 0.2
    lease_ttl: float = Field(5.0, gt=0, description="account lease TTL (s): a standby worker takes over after it")
    batch_max: int = Field(1000, ge=1, description="most swaps per batch transaction (1 = batching off); below it, a "
                           "batch is sized to half the chain's block gas limit at the measured gas per swap")
    rpc_timeout: float = 5.0
    rpc_slow_after: float = Field(1.0, ge=0, description="seconds a request may wait on the active RPC endpoint "
                                  "before every endpoint is asked for its head; one that answers in time, at or "
                                  "above the head seen, replaces an active endpoint that does not (0: never)")
    max_priority_fee_gwei: float = Field(200.0, gt=0, description="the most the seller's reveal (SC claim) tips to "
                                         "win inclusion over a congested mempool")
    max_fee_gwei: float | None = Field(None, gt=0, description="the most any transaction pays per gas (EIP-1559 max "
                                       "fee, or legacy gas price), bumps included: a fee above is held at it, "
                                       "counted (dvp_fee_ceiling_hits) and logged fee_ceiling_reached")
    compliance_checks: bool = Field(True, description="ask each token at intake whether it would make the trade's "
                                    "transfers (ERC-3643 compliance, allowlists, pause, freezes)")
    log_level: str = "INFO"

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, description="HTTP API + dashboard port; 0 disables the API in this worker")
    api_tokens: SecretStr = Field(SecretStr(""), description="comma-separated bearer tokens, each `role:token` "
                                  "(read: GETs; submit: read and every POST; operator: everything) or a bare "
                                  "token (operator)")
    api_read_auth: bool = Field(False, description="require a bearer token on the read endpoints too")
    webhook_url: str = Field("", description="the back office's endpoint: every state change and alert is POSTed "
                             "to it, HMAC-signed, at least once (relayer/webhooks.py); empty = no webhooks")
    webhook_secret: SecretStr = Field(SecretStr(""), description="the HMAC-SHA256 key of X-DVP-Signature")
    webhook_max_attempts: int = Field(20, ge=1, description="deliveries tried before an event is dead-lettered (2 s "
                                      "doubling to 15 min between them: 20 cover a receiver down for ~3 hours)")
    webhook_timeout: float = Field(5.0, gt=0, description="seconds one delivery may take")
    api_max_lag_blocks: int = Field(20, description="readiness fails when a follower lags more blocks than this")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        return _check_urls(v, ("redis", "rediss", "unix"))

    @field_validator("st_rpc_url", "sc_rpc_url", "st_rpc_standby_urls", "sc_rpc_standby_urls")
    @classmethod
    def _rpc_urls(cls, v: str) -> str:
        return _check_urls(v, ("http", "https"))

    @field_validator("st_ws_url", "sc_ws_url")
    @classmethod
    def _ws_urls(cls, v: str) -> str:
        return _check_urls(v, ("ws", "wss"))

    @field_validator("st_escrow", "sc_escrow", "dvp_contract", "st_tokens", "sc_tokens", "trusted_pts_signers",
                     "holder_signed")
    @classmethod
    def _addresses(cls, v: str) -> str:
        return _check_addresses(v)

    @field_validator("party_keys")
    @classmethod
    def _party_keys(cls, v: SecretStr) -> SecretStr:
        for i, key in enumerate(_split(v.get_secret_value()), 1):
            if not _KEY.match(key):  # never echo the value: it is (meant to be) a private key
                raise ValueError(f"entry {i} is not a 32-byte private key (64 hex digits, 0x optional)")
        return v

    @field_validator("signers")
    @classmethod
    def _signer_refs(cls, v: SecretStr) -> SecretStr:
        for i, ref in enumerate(_split(v.get_secret_value()), 1):
            if not ref.startswith(("pkcs11:", "keystore:", "env:")):  # never echo it: it may be a raw key
                raise ValueError(f"entry {i} is not a signer reference (pkcs11:…, keystore:…, env:0x…)")
        return v

    @field_validator("secret_key", "previous_secret_keys")
    @classmethod
    def _secret_key(cls, v: SecretStr) -> SecretStr:
        for raw in _split(v.get_secret_value()):
            try:
                key = base64.urlsafe_b64decode(raw)
            except (binascii.Error, ValueError):
                raise ValueError("is not url-safe base64 (generate one with `dvp-relayer keygen`)") from None
            if len(key) != 32:
                raise ValueError("must decode to 32 bytes (generate one with `dvp-relayer keygen`)")
        return v

    @field_validator("pts_domain_salt")
    @classmethod
    def _salt(cls, v: str) -> str:
        if v and not re.match(r"^0x[0-9a-fA-F]{64}$", v.strip()):
            raise ValueError("must be 0x followed by 64 hex digits (32 bytes)")
        return v

    def secret_box(self) -> SecretBox:
        """The key that seals new HTLC secrets (DVP_SECRET_KEY) and the older ones that still open theirs."""
        return SecretBox(self.secret_key.get_secret_value(), _split(self.previous_secret_keys.get_secret_value()))

    def rpc_auth(self, lg: LedgerConfig) -> str:
        """The Authorization header value for a ledger's RPC ("" = none): DVP_ST_RPC_AUTH / DVP_SC_RPC_AUTH for
        the ledgers named st / sc, else the environment variable its rpc_auth_env names."""
        if lg.rpc_auth_env:
            value = os.environ.get(lg.rpc_auth_env, "")
            if not value:
                raise ConfigError(f"ledger {lg.name}: rpc_auth_env names {lg.rpc_auth_env}, which is not set")
            return value
        if lg.name in ("st", "sc"):
            return str(getattr(self, f"{lg.name}_rpc_auth").get_secret_value())
        return ""

    def api_token_roles(self) -> dict[str, str]:
        """bearer token -> its role (read, submit, operator); a token without a role prefix is an operator's."""
        roles: dict[str, str] = {}
        for entry in _split(self.api_tokens.get_secret_value()):
            role, sep, token = entry.partition(":")
            if not sep or role not in API_ROLES:
                role, token = "operator", entry
            roles[token] = role
        return roles

    def api_token_list(self) -> list[str]:
        return list(self.api_token_roles())

    def st_urls(self) -> list[str]:
        return [self.st_rpc_url, *_split(self.st_rpc_standby_urls)]

    def sc_urls(self) -> list[str]:
        return [self.sc_rpc_url, *_split(self.sc_rpc_standby_urls)]

    def domain_salt(self) -> bytes:
        """DVP_PTS_DOMAIN_SALT as 32 bytes; ConfigError when missing or malformed."""
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

    def holder_accounts(self) -> frozenset[str]:
        """DVP_HOLDER_SIGNED: accounts whose locks are submitted from their holders' authorisations. An account
        whose key is configured too is refused: one way to sign per account."""
        holders = frozenset(to_checksum_address(a) for a in _split(self.holder_signed))
        both = holders & set(self.accounts())
        if both:
            raise ConfigError(f"DVP_HOLDER_SIGNED names accounts whose keys are configured too: {sorted(both)}")
        return holders

    def sc_token_set(self) -> set[str]:
        return {to_checksum_address(a) for a in _split(self.sc_tokens)}

    _signers: dict[str, HashSigner] | None = PrivateAttr(None)

    def accounts(self) -> dict[str, HashSigner]:
        """address -> signer, for every account we act for (DVP_PARTY_KEYS and DVP_SIGNERS); opened once (an HSM
        session, a keystore's decryption). ConfigError naming the entry, never its key, when one cannot sign."""
        if self._signers is None:
            defaults = SignerDefaults(self.pkcs11_module, self.pkcs11_pin_file, self.keystore_passphrase_file)
            signers: dict[str, HashSigner] = {}
            entries = [("DVP_PARTY_KEYS", i, "env:" + k) for i, k in
                       enumerate(_split(self.party_keys.get_secret_value()), 1)]
            entries += [("DVP_SIGNERS", i, ref) for i, ref in enumerate(_split(self.signers.get_secret_value()), 1)]
            for var, i, ref in entries:
                try:
                    signer = env_signer(ref[4:]) if var == "DVP_PARTY_KEYS" else parse_reference(ref, defaults)
                except SignerError as exc:
                    raise ConfigError(f"{var} entry {i}: {exc}") from None
                if signer.address in signers:
                    raise ConfigError(f"{var} entry {i}: account {signer.address} is configured twice")
                signers[signer.address] = signer
            self._signers = signers
        return dict(self._signers)

    def ledger_configs(self) -> list[LedgerConfig]:
        """The ledgers to follow: the config file's, where a DVP_ST_* / DVP_SC_* value set explicitly overrides
        that value of the ledger named "st" / "sc"; without a file, those two ledgers from the variables."""
        if not self.config_file:
            return [self._ledger_from_vars("st"), self._ledger_from_vars("sc")]
        path = Path(self.config_file)
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"DVP_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"DVP_CONFIG_FILE: {path} is not valid TOML: {exc}") from None
        try:
            ledgers = LedgersFile.model_validate(doc).ledgers
        except ValidationError as exc:
            raise ConfigError(f"DVP_CONFIG_FILE {path}: " + "; ".join(_describe(e) for e in exc.errors())) from None
        merged = [self._overridden(lg) for lg in ledgers]
        try:  # the overrides must leave a list that is valid as a whole too (distinct chain ids per role, ...)
            LedgersFile.model_validate({"ledgers": [lg.model_dump() for lg in merged]})
        except ValidationError as exc:
            raise ConfigError(f"DVP_CONFIG_FILE {path} with the DVP_ST_* / DVP_SC_* overrides: "
                              + "; ".join(_describe(e) for e in exc.errors())) from None
        return merged

    def _ledger_from_vars(self, role: str) -> LedgerConfig:
        get = lambda field: getattr(self, f"{role}_{field}")  # noqa: E731
        try:
            return LedgerConfig(
                name=role, role=role, chain_id=get("chain_id"), rpc_urls=self.st_urls() if role == "st" else self.sc_urls(),
                ws_url=get("ws_url"), escrow=get("escrow"), tokens=_split(get("tokens")), start_block=get("start_block"),
                dvp_contract=self.dvp_contract if role == "st" else "",
            )
        except ValidationError as exc:
            raise ConfigError(f"DVP_{role.upper()}_*: " + "; ".join(
                f"DVP_{role.upper()}_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors())) from None

    def _overridden(self, lg: LedgerConfig) -> LedgerConfig:
        """The file's ledger with the DVP_<ROLE>_* values that override it: only for the ledger named like its
        role ("st" / "sc"), and only values set explicitly that say something (not a default, not blank, not
        the zero address of .env.example's placeholders). A primary RPC URL and the standby URLs override
        their own part of the list."""
        role = lg.name
        if role not in ("st", "sc") or lg.role != role:
            return lg
        zero = "0x" + "0" * 40
        defaults = type(self).model_fields
        update: dict[str, object] = {}
        for var in ("chain_id", "ws_url", "escrow", "tokens", "start_block", "rpc_url", "rpc_standby_urls"):
            field = f"{role}_{var}"
            value = getattr(self, field)
            if field not in self.model_fields_set or value == defaults[field].default:
                continue
            if isinstance(value, str) and (not _split(value) or value.strip().lower() == zero):
                continue
            if var == "rpc_url":
                update["rpc_urls"] = [value, *lg.rpc_urls[1:]]
            elif var == "rpc_standby_urls":
                primary = update.get("rpc_urls", lg.rpc_urls)[0]  # type: ignore[index]
                update["rpc_urls"] = [primary, *_split(value)]
            elif var == "tokens":
                update["tokens"] = _split(value)
            else:
                update[var] = value
        if role == "st" and "dvp_contract" in self.model_fields_set and self.dvp_contract.strip():
            update["dvp_contract"] = self.dvp_contract
        return lg.model_copy(update=update) if update else lg

    def timing(self, *ledgers: LedgerConfig) -> TimingPolicy:
        """The timing of trades across these ledgers (Δ from the slowest one's k and block time); without any,
        from DVP_CONFIRMATIONS and DVP_BLOCK_TIME."""
        return TimingPolicy(
            confirmations=max([lg.confirmations or self.confirmations for lg in ledgers] or [self.confirmations]),
            block_time=max([lg.block_time or self.block_time for lg in ledgers] or [self.block_time]),
            inclusion_delay=self.inclusion_delay,
            margin=self.margin,
            max_clock_skew=self.max_clock_skew,
            st_lock_duration=self.st_lock_duration,
        )


def _describe(err: object) -> str:
    e = err  # a pydantic ErrorDetails
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")  # type: ignore[index]
    return f"{loc or 'file'}: {e['msg'].removeprefix('Value error, ')}"  # type: ignore[index]


def env_file() -> str:
    """The env file settings are read from besides the environment (DVP_ENV_FILE, default .env)."""
    return os.environ.get("DVP_ENV_FILE", ".env")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and the env file; ConfigError naming each bad variable and its source."""
    try:
        return Settings(_env_file=env_file(), **overrides)  # type: ignore[arg-type]  # **kwargs of mixed types
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            var = f"DVP_{field.upper()}"
            where = "environment" if var in os.environ else env_file()
            problems.append(f"{var} (from {where}): {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(problems)) from None
