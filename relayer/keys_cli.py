"""`dvp-relayer keys list|new|import`: the accounts this worker signs for, and making keys where firms keep them.

A key is made inside the HSM (`keys new pkcs11:…`) or in an encrypted keystore (`keys new keystore:…`); an
existing raw key (a devnet's, a legacy one) is moved in with `keys import`, read from stdin, never an argument (it
would show in `ps` and in the shell's history). Nothing here prints a key, a PIN or a passphrase.
"""

from __future__ import annotations

import json
import sys

import click

from adapters.signers import (
    SignerDefaults,
    SignerError,
    keystore_reference,
    keystore_write,
    pkcs11_generate,
    pkcs11_import,
    pkcs11_labels,
    pkcs11_reference,
)


def _defaults() -> SignerDefaults:
    from relayer.config import load_settings

    s = load_settings()
    return SignerDefaults(s.pkcs11_module, s.pkcs11_pin_file, s.keystore_passphrase_file)


def _fail(exc: SignerError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def keys() -> None:
    """The accounts this worker signs for: HSM (pkcs11:), keystore (keystore:) and raw devnet keys (env:)."""


@keys.command("list")
@click.option("--token", "token_ref", default="", metavar="PKCS11_URI",
              help="list the secp256k1 keys in this HSM token instead (pkcs11:token=T?pin-source=FILE)")
def keys_list(token_ref: str) -> None:
    """One JSON line per configured account (DVP_PARTY_KEYS, DVP_SIGNERS): address, kind, reference."""
    from relayer.config import load_settings

    try:
        if token_ref:
            ref = pkcs11_reference(token_ref, _defaults(), need_object=False)
            for label, address in pkcs11_labels(ref):
                click.echo(json.dumps({"address": address, "kind": "pkcs11",
                                       "reference": f"pkcs11:token={ref.token};object={label}"}))
            return
        for address, signer in load_settings().accounts().items():
            click.echo(json.dumps({"address": address, "kind": getattr(signer, "kind", "local"),
                                   "reference": getattr(signer, "reference", "")}))
    except SignerError as exc:
        raise _fail(exc) from None


@keys.command("new")
@click.argument("reference")
def keys_new(reference: str) -> None:
    """Make a new key: inside the HSM (pkcs11:token=T;object=LABEL), never exportable, or in a new keystore file
    (keystore:/path.json?passphrase-file=FILE). Prints its address and the reference to put in DVP_SIGNERS."""
    click.echo(json.dumps(_store(reference, None)))


@keys.command("import")
@click.argument("reference")
def keys_import(reference: str) -> None:
    """Move a raw private key (0x + 64 hex digits, read from stdin) into the HSM or a new keystore file."""
    raw = sys.stdin.readline().strip().removeprefix("0x")
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise click.ClickException("stdin: expected one private key, 0x + 64 hex digits")
    click.echo(json.dumps(_store(reference, key)))


def _store(reference: str, key: bytes | None) -> dict[str, str]:
    try:
        if reference.startswith("pkcs11:"):
            ref = pkcs11_reference(reference, _defaults())
            address = pkcs11_import(ref, key) if key is not None else pkcs11_generate(ref)
            return {"address": address, "kind": "pkcs11", "reference": f"pkcs11:token={ref.token};object={ref.label}"}
        if reference.startswith("keystore:"):
            path, passphrase_file = keystore_reference(reference, _defaults())
            return {"address": keystore_write(path, passphrase_file, key), "kind": "keystore",
                    "reference": f"keystore:{path}"}
    except SignerError as exc:
        raise _fail(exc) from None
    raise click.ClickException("keys are made in an HSM (pkcs11:…) or a keystore (keystore:…), never as env:")


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-seal the secrets of every open trade under the current DVP_SECRET_KEY (the old key in
    DVP_PREVIOUS_SECRET_KEYS opens them). Safe while workers run: each write is compare-and-set. Once it reports
    nothing left under an old key, that key can leave DVP_PREVIOUS_SECRET_KEYS."""
    import asyncio

    from relayer.config import load_settings
    from relayer.errors import RelayerError
    from relayer.secret_rotation import reseal_open_trades
    from relayer.service import store_for

    settings = load_settings()
    try:
        box = settings.secret_box()
    except RelayerError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> dict[str, object]:
        store = store_for(settings)
        try:
            return await reseal_open_trades(store, box)
        finally:
            await store.close()

    report = asyncio.run(run())
    click.echo(json.dumps(report))
    if report["unopened"] or report["busy"]:
        raise SystemExit(1)
