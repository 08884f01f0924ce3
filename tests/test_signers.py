"""The signers behind every transaction and EIP-712 signature: a key in a real software HSM (SoftHSM2 through
PKCS#11), an encrypted keystore, a raw devnet key. Each must produce what the chain accepts from that account,
and none may let a key, PIN or passphrase out (errors, `keys list`, repr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PrivateKey

from adapters.signers import (
    SECP256K1_N,
    SignerError,
    ethereum_signature,
    keystore_write,
    parse_reference,
    pkcs11_generate,
    pkcs11_import,
    pkcs11_reference,
)
from relayer.errors import ConfigError
from tests.relayer_kit import Net, worker_env

EXE = str(Path(sys.executable).with_name("dvp-relayer"))
TYPED = {"types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}],
                   "Lock": [{"name": "amount", "type": "uint256"}, {"name": "receiver", "type": "address"}]},
         "primaryType": "Lock", "domain": {"name": "HashedTimelockEscrow", "chainId": 17001},
         "message": {"amount": 10, "receiver": "0x" + "11" * 20}}
TXS = [  # EIP-1559, and legacy with a chain id (what a permissioned chain at gas price 0 takes)
    {"chainId": 17001, "nonce": 7, "gas": 90_000, "to": "0x" + "22" * 20, "value": 0, "data": b"\x01\x02",
     "maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 10**9},
    {"chainId": 17003, "nonce": 0, "gas": 21_000, "to": "0x" + "33" * 20, "value": 5, "data": b"", "gasPrice": 0},
]


def _signs_for(signer, address: str) -> None:
    for tx in TXS:
        signed = signer.sign_transaction(tx)
        assert Account.recover_transaction(signed.raw_transaction) == address
        assert signed.s <= SECP256K1_N // 2
    sig = signer.sign_typed_data(full_message=TYPED)
    assert len(sig.signature) == 65 and sig.signature[-1] in (27, 28)
    assert Account.recover_message(encode_typed_data(full_message=TYPED), signature=sig.signature) == address


def test_a_key_generated_in_the_hsm_signs_transactions_and_typed_data_and_never_leaves_it(softhsm):
    from pkcs11 import Attribute
    from pkcs11.exceptions import AttributeSensitive

    ref = softhsm.reference("dvp-test", "generated")
    address = pkcs11_generate(pkcs11_reference(ref))
    signer = parse_reference(ref)
    assert signer.address == address and signer.kind == "pkcs11"
    _signs_for(signer, address)
    for _ in range(40):  # an HSM gives s from either half: every one must come out low (EIP-2)
        assert signer._sign_hash(os.urandom(32)).s <= SECP256K1_N // 2
    assert signer._priv[Attribute.SENSITIVE] and not signer._priv[Attribute.EXTRACTABLE]
    with pytest.raises(AttributeSensitive):
        signer._priv[Attribute.VALUE]
    assert "271828" not in repr(signer) and "pin-source" in repr(signer)


def test_an_imported_key_keeps_its_address_and_a_label_is_never_overwritten(softhsm):
    from pkcs11 import Attribute
    from pkcs11.exceptions import AttributeSensitive

    acct = Account.create()
    ref = softhsm.reference("dvp-test", "imported")
    assert pkcs11_import(pkcs11_reference(ref), bytes(acct.key)) == acct.address
    signer = parse_reference(ref)
    _signs_for(signer, acct.address)
    with pytest.raises(AttributeSensitive):
        signer._priv[Attribute.VALUE]
    with pytest.raises(SignerError, match="already has an object labelled 'imported'"):
        pkcs11_import(pkcs11_reference(ref), bytes(Account.create().key))
    assert parse_reference(ref).address == acct.address


@pytest.mark.parametrize("ref, fragment", [
    ("pkcs11:token=dvp-test;object=nobody?pin-source={pin}", "no EC key pair labelled 'nobody'"),
    ("pkcs11:token=no-such-token;object=x?pin-source={pin}", "no PKCS#11 token labelled 'no-such-token'"),
    ("pkcs11:token=dvp-test;object=x", "no PIN file"),
    ("pkcs11:token=dvp-test;object=x?pin-value=271828", "pin-value is refused"),
    ("pkcs11:object=x?pin-source={pin}", "needs token="),
    ("pkcs11:token=dvp-test;object=x?pin-source={pin}&module-path=/nonexistent.so", "module /nonexistent.so not found"),
])
def test_a_pkcs11_reference_that_cannot_sign_is_one_clear_error(softhsm, ref, fragment):
    with pytest.raises(SignerError) as err:
        parse_reference(ref.format(pin=softhsm.dir / "dvp-test.pin"))
    assert fragment in str(err.value) and "271828" not in str(err.value)


def test_a_wrong_pin_is_refused_without_showing_it(softhsm, tmp_path):
    pin = tmp_path / "wrong.pin"
    pin.write_text("999999\n")
    pin.chmod(0o600)
    import pkcs11

    # a fresh process: this one is already logged in to the token, and PKCS#11 login is per process
    code = ("import sys; from adapters.signers import *\n"
            f"try: parse_reference('pkcs11:token=dvp-test;object=generated?pin-source={pin}')\n"
            "except SignerError as e: print(e); sys.exit(3)")
    out = subprocess.run([sys.executable, "-c", code], env=os.environ | softhsm.env(), capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 3 and "is wrong" in out.stdout and "999999" not in out.stdout + out.stderr
    assert pkcs11.__name__  # the binding is installed with the package


def test_ethereum_signature_lowers_a_high_s_and_finds_the_recovery_id():
    key = PrivateKey(os.urandom(32))
    digest = os.urandom(32)
    sig = key.sign_msg_hash(digest)
    high = ethereum_signature(sig.r, SECP256K1_N - sig.s, digest, key.public_key)  # as an HSM may return it
    assert (high.r, high.s, high.v) == (sig.r, sig.s, sig.v)
    with pytest.raises(SignerError, match="does not verify"):
        ethereum_signature(sig.r, sig.s, os.urandom(32), key.public_key)


def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_a_keystore_opens_with_its_passphrase_file_only(tmp_path):
    acct = Account.create()
    pw = _secret_file(tmp_path / "seller.pass", "correct horse battery staple")
    path = tmp_path / "seller.json"
    assert keystore_write(str(path), str(pw), bytes(acct.key)) == acct.address
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    signer = parse_reference(f"keystore:{path}?passphrase-file={pw}")
    assert signer.kind == "keystore"
    _signs_for(signer, acct.address)
    with pytest.raises(SignerError, match="exists already"):
        keystore_write(str(path), str(pw))
    wrong = _secret_file(tmp_path / "wrong.pass", "Tr0ub4dor&3")
    with pytest.raises(SignerError, match="does not open it") as err:
        parse_reference(f"keystore:{path}?passphrase-file={wrong}")
    assert "Tr0ub4dor" not in str(err.value)
    loose = _secret_file(tmp_path / "loose.pass", "correct horse battery staple", 0o644)
    with pytest.raises(SignerError, match="readable by group or others"):
        parse_reference(f"keystore:{path}?passphrase-file={loose}")
    with pytest.raises(SignerError, match="no passphrase file"):
        parse_reference(f"keystore:{path}")


def test_the_settings_take_every_kind_of_signer_and_refuse_one_account_twice(net: Net, softhsm, tmp_path):
    acct = Account.create()
    ref = softhsm.reference("dvp-test", "settings")
    pkcs11_import(pkcs11_reference(ref), bytes(acct.key))
    pw = _secret_file(tmp_path / "ks.pass", "a passphrase")
    ks = Account.create()
    keystore_write(str(tmp_path / "ks.json"), str(pw), bytes(ks.key))
    settings = net.settings([net.seller], signers=f"{ref}, keystore:{tmp_path / 'ks.json'}",
                            keystore_passphrase_file=str(pw))
    accounts = settings.accounts()
    assert {a: s.kind for a, s in accounts.items()} == {net.seller.address: "env", acct.address: "pkcs11",
                                                         ks.address: "keystore"}
    assert settings.accounts()[acct.address] is accounts[acct.address]  # opened once (one HSM session)
    twice = net.settings([net.seller], signers="env:" + net.seller.key.hex())
    with pytest.raises(ConfigError, match=f"DVP_SIGNERS entry 1: account {net.seller.address} is configured twice"):
        twice.accounts()
    bad = net.settings([], signers="env:0x1234")
    with pytest.raises(ConfigError, match="DVP_SIGNERS entry 1: env: signer is not a 32-byte private key") as err:
        bad.accounts()
    assert "1234" not in str(err.value)


def test_keys_new_import_and_list_never_print_a_key(net: Net, softhsm, tmp_path):
    env = worker_env(net.settings([net.seller])) | softhsm.env()
    env["DVP_PKCS11_PIN_FILE"] = str(softhsm.dir / "dvp-test.pin")

    def keys(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([EXE, "keys", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)

    made = keys("new", "pkcs11:token=dvp-test;object=cli-new")
    assert made.returncode == 0, made.stderr[-800:]
    new_address = json.loads(made.stdout)["address"]
    acct = Account.create()
    moved = keys("import", "pkcs11:token=dvp-test;object=cli-imported", stdin=acct.key.hex() + "\n")
    assert moved.returncode == 0 and json.loads(moved.stdout)["address"] == acct.address, moved.stderr[-800:]
    listed = keys("list", "--token", "pkcs11:token=dvp-test")
    labels = {json.loads(line)["reference"]: json.loads(line)["address"] for line in listed.stdout.splitlines()}
    assert labels["pkcs11:token=dvp-test;object=cli-new"] == new_address
    assert labels["pkcs11:token=dvp-test;object=cli-imported"] == acct.address
    env["DVP_SIGNERS"] = "pkcs11:token=dvp-test;object=cli-imported"
    configured = keys("list")
    rows = [json.loads(line) for line in configured.stdout.splitlines()]
    assert {(r["address"], r["kind"]) for r in rows} == {(net.seller.address, "env"), (acct.address, "pkcs11")}
    everything = made.stdout + moved.stdout + listed.stdout + configured.stdout + configured.stderr
    for secret in (acct.key.hex()[2:], net.seller.key.hex()[2:], "271828"):
        assert secret not in everything
    refused = keys("import", "pkcs11:token=dvp-test;object=cli-bad", stdin="0x1234\n")
    assert refused.returncode == 1 and "expected one private key" in refused.stderr
    env_kind = keys("new", "env:")
    assert env_kind.returncode == 1 and "never as env:" in env_kind.stderr


async def test_a_worker_with_both_party_keys_in_the_hsm_settles_and_no_key_or_pin_leaks(net: Net, softhsm, tmp_path):
    """The demo trade, settled by a `dvp-relayer run` whose environment has no key at all: the seller's and the
    buyer's keys are in SoftHSM2 (imported: the devnet funded these accounts), the PIN in a file."""
    from relayer.store import Store
    from tests.relayer_kit import Worker, submit_trades, wait_all_settled
    from tests.test_crash_recovery import assert_no_plaintext_secrets

    refs = []
    for who, acct in (("seller", net.seller), ("buyer", net.buyer)):
        ref = softhsm.reference("dvp-test", f"worker-{who}")
        pkcs11_import(pkcs11_reference(ref), bytes(acct.key))
        refs.append(ref)
    settings = net.settings([], signers=",".join(refs))
    assert set(settings.accounts()) == {net.seller.address, net.buyer.address}
    worker = Worker(settings, tmp_path / "worker.log")
    assert not any(net.seller.key.hex()[2:] in v or net.buyer.key.hex()[2:] in v for v in worker.env.values())
    store = Store.from_url(settings.redis_url)
    st_before = await net.balance(net.st, net.st_token, net.buyer.address)
    worker.start()
    try:
        ids = await submit_trades(net, settings, 2, sc_base=4_100)
        await wait_all_settled(store, ids, timeout=90)
    finally:
        assert worker.terminate() == 0
    assert await net.balance(net.st, net.st_token, net.buyer.address) == st_before + 2
    log = (tmp_path / "worker.log").read_text()
    assert "raw_keys_on_a_real_chain" not in log  # a devnet: no warning
    await assert_no_plaintext_secrets(store, settings, ids[0], log,
                                      extra=frozenset({net.seller.key.hex()[2:], net.buyer.key.hex()[2:], "271828"}))
    await store.close()


def test_raw_keys_against_a_chain_that_is_not_a_devnet_are_warned_about(net: Net):
    """The warning `run` gives at start (the engine's, once the chain ids are known)."""
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from relayer.engine import Engine

    logs = []
    for chain_ids in ((17001, 17002), (1, 17002)):
        fake = SimpleNamespace(settings=net.settings([net.seller]), log=None,
                               sides=[SimpleNamespace(chain_id=c) for c in chain_ids])
        with capture_logs() as captured:
            import structlog

            fake.log = structlog.get_logger()
            Engine._warn_raw_keys(fake)  # type: ignore[arg-type]
        logs.append([e for e in captured if e["event"] == "raw_keys_on_a_real_chain"])
    assert logs[0] == []
    assert logs[1] and logs[1][0]["chain_ids"] == [1] and logs[1][0]["accounts"] == [net.seller.address]
