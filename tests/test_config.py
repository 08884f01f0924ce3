"""Configuration: .env.example documents every setting; secrets never print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relayer.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_documents_every_setting_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(DVP_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    fields = {f"DVP_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set(), f"undocumented: {sorted(fields - documented)}"
    extra = documented - fields - {"DVP_DEPLOYER_KEY", "DVP_ENV_FILE"}
    assert extra == set(), f"documented but unknown: {sorted(extra)}"


def test_secrets_do_not_print():
    from relayer.secrets import generate_key

    key, box_key = "0x" + "ab" * 32, generate_key()
    s = Settings(_env_file=None, party_keys=key, secret_key=box_key, api_tokens="tok-123")
    shown = repr(s) + str(s) + str(s.model_dump())
    assert "ab" * 32 not in shown and box_key not in shown and "tok-123" not in shown


async def test_a_wrong_chain_behind_the_rpc_url_is_refused(net):
    from relayer.errors import ConfigError

    engine = await _engine_with(net, st_chain_id=net.doc["st"]["chain_id"] + 1)
    with pytest.raises(ConfigError, match="serves chain"):
        await engine.start()
    from relayer.service import close_engine

    await close_engine(engine)


async def _engine_with(net, **over):
    from relayer.service import build_engine

    return build_engine(net.settings([net.seller], **over))


# ------------------------------------------------------------------ the ledgers file (DVP_CONFIG_FILE)

A1, A2, A3 = ("0x" + c * 40 for c in "123")


def _ledgers(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ledgers.toml"
    path.write_text(text)
    return path


THREE = f"""
[[ledgers]]
name = "st"
role = "st"
chain_id = 11
rpc_urls = ["http://127.0.0.1:1"]
escrow = "{A1}"
tokens = ["{A2}"]

[[ledgers]]
name = "st2"
role = "st"
chain_id = 13
rpc_urls = ["http://127.0.0.1:3", "http://127.0.0.1:4"]
escrow = "{A3}"
confirmations = 3
block_time = 2.0

[[ledgers]]
name = "sc"
role = "sc"
chain_id = 12
rpc_urls = ["http://127.0.0.1:2"]
escrow = "{A2}"
"""


def test_a_ledgers_file_lists_any_number_of_ledgers_and_each_pair_gets_its_own_delta(tmp_path):
    s = Settings(_env_file=None, config_file=str(_ledgers(tmp_path, THREE)), confirmations=1, block_time=1.0)  # type: ignore[call-arg]
    ledgers = {lg.name: lg for lg in s.ledger_configs()}
    assert list(ledgers) == ["st", "st2", "sc"]
    assert ledgers["st2"].rpc_urls == ["http://127.0.0.1:3", "http://127.0.0.1:4"]
    fast, slow = s.timing(ledgers["st"], ledgers["sc"]), s.timing(ledgers["st2"], ledgers["sc"])
    assert (fast.confirmations, fast.block_time) == (1, 1.0) and (slow.confirmations, slow.block_time) == (3, 2.0)
    assert slow.delta() - fast.delta() == 3 * 2 - 1 * 1  # Δ grows by k·block time of the slower chain


def test_a_variable_set_explicitly_overrides_that_value_of_the_ledger_it_names(tmp_path, monkeypatch):
    monkeypatch.setenv("DVP_ST_RPC_URL", "http://10.0.0.9:8545")
    monkeypatch.setenv("DVP_CONFIG_FILE", str(_ledgers(tmp_path, THREE)))
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    ledgers = {lg.name: lg for lg in s.ledger_configs()}
    assert ledgers["st"].rpc_urls == ["http://10.0.0.9:8545"]
    assert ledgers["st"].escrow == A1 and ledgers["st"].chain_id == 11  # the rest from the file
    assert ledgers["st2"].rpc_urls[0] == "http://127.0.0.1:3" and ledgers["sc"].rpc_urls == ["http://127.0.0.1:2"]


def test_without_a_file_the_variables_are_one_st_chain_and_one_coin_ledger():
    s = Settings(_env_file=None, st_escrow=A1, sc_escrow=A2, st_chain_id=5, sc_tokens=f"{A3}")  # type: ignore[call-arg]
    st, sc = s.ledger_configs()
    assert (st.name, st.role, st.chain_id, st.escrow) == ("st", "st", 5, A1)
    assert (sc.name, sc.role, sc.tokens) == ("sc", "sc", [A3])


@pytest.mark.parametrize("text, says", [
    (THREE.replace('name = "st2"', 'name = "st"'), "ledger names must be distinct: st"),
    (THREE.replace("chain_id = 13", "chain_id = 11"), "two st ledgers on chain id 11"),
    (THREE.replace("chain_id = 13\n", ""), "each needs its chain_id"),
    (THREE.replace(f'escrow = "{A3}"', 'escrow = "0x1234"'), "ledgers[1].escrow"),
    (THREE.replace('role = "sc"', 'role = "coin"'), "ledgers[2].role"),
    (THREE + "\nsurprise = 1\n", "surprise"),
    (THREE.replace("[[ledgers]]", "[[ledgers", 1), "not valid TOML"),
    (THREE.replace('name = "st2"', 'name = "st2"\ngas_price_gwei = 0'), 'applies to fee_mode = "legacy" only'),
    (THREE.replace('name = "st2"', 'name = "st2"\nfee_mode = "type0"'), "ledgers[1].fee_mode"),
    (THREE.replace('name = "st2"', 'name = "st2"\nfee_mode = "legacy"\ngas_price_gwei = -1'), "gas_price_gwei"),
    (THREE.replace('name = "st2"', 'name = "st2"\nevm_version = "paris"'), "ledgers[1].evm_version"),
])
def test_a_bad_ledgers_file_is_one_config_error_naming_the_entry(tmp_path, text, says):
    from relayer.errors import ConfigError

    s = Settings(_env_file=None, config_file=str(_ledgers(tmp_path, text)))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=re.escape(says)):
        s.ledger_configs()


def test_the_example_ledgers_file_parses():
    s = Settings(_env_file=None, config_file=str(ROOT / "docs" / "ledgers.example.toml"))  # type: ignore[call-arg]
    ledgers = s.ledger_configs()
    assert sorted(lg.role for lg in ledgers) == ["sc", "st", "st"]
    st2 = next(lg for lg in ledgers if lg.name == "st2")
    assert (st2.fee_mode, st2.gas_price_gwei, st2.evm_version) == ("legacy", 0, "london")


def test_the_env_example_placeholders_do_not_override_the_ledgers_file(tmp_path):
    """Found in review: `cp .env.example .env` beside a ledgers file replaced the file's st and sc ledgers with
    localhost RPCs and zero escrows (explicit, but placeholders)."""
    s = Settings(_env_file=ROOT / ".env.example", config_file=str(_ledgers(tmp_path, THREE)))  # type: ignore[call-arg]
    ledgers = {lg.name: lg for lg in s.ledger_configs()}
    assert (ledgers["st"].escrow, ledgers["st"].rpc_urls, ledgers["st"].tokens) == (A1, ["http://127.0.0.1:1"], [A2])
    assert (ledgers["sc"].escrow, ledgers["sc"].rpc_urls) == (A2, ["http://127.0.0.1:2"])


def test_standby_urls_alone_keep_the_files_primary_and_blank_values_override_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DVP_ST_RPC_STANDBY_URLS", "http://10.0.0.8:8545")
    monkeypatch.setenv("DVP_ST_TOKENS", " , ")
    s = Settings(_env_file=None, config_file=str(_ledgers(tmp_path, THREE)))  # type: ignore[call-arg]
    st = next(lg for lg in s.ledger_configs() if lg.name == "st")
    assert st.rpc_urls == ["http://127.0.0.1:1", "http://10.0.0.8:8545"] and st.tokens == [A2]


@pytest.mark.parametrize("env, says", [
    ({"DVP_ST_CHAIN_ID": "13"}, "two st ledgers on chain id 13"),  # an override may not break the list
    ({"DVP_ST_CHAIN_ID": "0"}, "overrides: ledgers[0].chain_id"),  # one line, not a pydantic traceback
])
def test_an_override_that_breaks_the_ledgers_is_one_config_error(tmp_path, monkeypatch, env, says):
    from relayer.errors import ConfigError

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings(_env_file=None, config_file=str(_ledgers(tmp_path, THREE)))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=re.escape(says)):
        s.ledger_configs()


def test_without_a_file_a_bad_ledger_variable_is_one_config_error_naming_it():
    from relayer.errors import ConfigError

    with pytest.raises(ConfigError, match="DVP_ST_CHAIN_ID"):
        Settings(_env_file=None, st_chain_id=0).ledger_configs()  # type: ignore[call-arg]


def test_a_ledger_may_not_be_named_redis(tmp_path):
    from relayer.errors import ConfigError

    s = Settings(_env_file=None, config_file=str(_ledgers(tmp_path, THREE.replace('name = "st2"', 'name = "redis"'))))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="reserved"):
        s.ledger_configs()
