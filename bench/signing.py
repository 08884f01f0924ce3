"""What a signer costs: per-transaction signing time of each kind (raw key, keystore, SoftHSM2 through PKCS#11)
side by side in one process, and SoftHSM2 key slots for a bench whose workers sign in the HSM (`--signer pkcs11`).

The sender signs one transaction at a time per account (nonces are ordered), so 1 / signing time is the most
transactions per second one account can send; a batch transaction carries many legs, so per DvP the cost is that
time divided by the legs in a batch.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from adapters.signers import keystore_write, parse_reference, pkcs11_import, pkcs11_reference

TOKEN, PIN = "bench", "424242"


def bench_hsm(workdir: Path, keys: dict[str, bytes]) -> tuple[dict[str, str], str]:
    """A fresh SoftHSM2 under `workdir` with `keys` (label -> raw key) imported; the environment a worker needs
    (SOFTHSM2_CONF) and the DVP_SIGNERS value naming them. Sets SOFTHSM2_CONF in this process too."""
    from deploy.softhsm import SoftHsm

    shutil.rmtree(workdir / "softhsm", ignore_errors=True)
    hsm = SoftHsm(workdir / "softhsm")
    os.environ.update(hsm.env())  # this process loads the module with this config (once per process)
    hsm.init_token(TOKEN, pin=PIN, so_pin="1" + PIN)
    refs = []
    for label, key in keys.items():
        ref = hsm.reference(TOKEN, label)
        pkcs11_import(pkcs11_reference(ref), key)
        refs.append(ref)
    return hsm.env(), ",".join(refs)


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": round(s[len(s) // 2] * 1e3, 3), "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, 3)}


def signing_latency(workdir: Path, n: int = 400, hsm_refs: str = "") -> dict[str, Any]:
    """Sign the same kind of transaction a batch sends (EIP-1559, 2 KB of calldata) n times with each signer."""
    key = os.urandom(32)
    workdir.mkdir(parents=True, exist_ok=True)
    signers: dict[str, Any] = {"env": parse_reference("env:0x" + key.hex())}
    ks_dir = workdir / "keystore"
    shutil.rmtree(ks_dir, ignore_errors=True)
    ks_dir.mkdir()
    pw = ks_dir / "pass"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"bench passphrase\n")
    os.close(fd)
    keystore_write(str(ks_dir / "k.json"), str(pw), key)
    signers["keystore"] = parse_reference(f"keystore:{ks_dir / 'k.json'}?passphrase-file={pw}")
    if not hsm_refs:
        _, hsm_refs = bench_hsm(workdir, {"latency": key})
    signers["pkcs11"] = parse_reference(hsm_refs.split(",")[0])
    tx = {"chainId": 18201, "nonce": 0, "gas": 2_000_000, "to": "0x" + "42" * 20, "value": 0,
          "data": os.urandom(2048), "maxFeePerGas": 2 * 10**9, "maxPriorityFeePerGas": 10**9}
    out: dict[str, Any] = {"transactions": n}
    for _round in range(2):  # the first round warms each up; the second, interleaved, is the one reported
        samples: dict[str, list[float]] = {k: [] for k in signers}
        for i in range(n):
            for kind, signer in signers.items():
                t = time.perf_counter()
                signer.sign_transaction(tx | {"nonce": i})
                samples[kind].append(time.perf_counter() - t)
    for kind, values in samples.items():
        out[f"{kind}_ms"] = _ms(values)
    p50 = out["pkcs11_ms"]["p50"]
    out["pkcs11_over_env_p50"] = round(p50 / out["env_ms"]["p50"], 2)
    out["pkcs11_tx_per_s_per_account"] = {"from": "derived: 1 / pkcs11 p50 (one account signs in nonce order)",
                                          "value": round(1000 / p50)}
    return out
