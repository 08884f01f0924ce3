"""Access control around the data (issue 17): API tokens with roles, Redis behind an ACL user and TLS (a real
redis-server serving TLS only), RPC endpoints behind a bearer token. No credential reaches a log."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.exceptions import RedisError

from adapters.errors import LedgerError
from adapters.evm import EvmChain
from deploy.processes import RedisProcess, free_port
from relayer.errors import ConfigError
from relayer.protocol.states import TradeState
from relayer.service import build_engine
from relayer.store import Store
from tests.relayer_kit import Net, api_session, close_engine, drive


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dvp-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_api_tokens_have_roles_read_submit_operator(net: Net):
    engine = await net.engine([net.seller, net.buyer])
    tokens = {"r" * 24: "read", "s" * 24: "submit", "o" * 24: "operator"}
    try:
        async with api_session(engine, "", tokens=tokens, read_auth=True) as http:
            async def call(method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
                headers = {"Content-Type": "application/json"}
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with http.request(method, path, headers=headers,
                                        data=None if body is None else json.dumps(body)) as r:
                    return r.status, await r.json()

            signed = (await net.instruction()).model_dump()
            tid = signed["instruction"]["tradeId"]
            assert (await call("POST", "/v1/trades", None, signed))[0] == 401
            status, body = await call("POST", "/v1/trades", "r" * 24, signed)
            assert status == 403 and body["error"] == "forbidden"  # a read token never submits
            assert (await call("POST", "/v1/trades", "s" * 24, signed))[0] == 202
            assert (await call("POST", "/v1/trades", "o" * 24, signed))[0] == 202  # the operator may too
            assert (await call("GET", f"/v1/trades/{tid}", None))[0] == 401  # DVP_API_READ_AUTH=true
            for token in ("r" * 24, "s" * 24, "o" * 24):
                assert (await call("GET", f"/v1/trades/{tid}", token))[0] == 200
            # the DvP signatures a relayer hands out need a submit (or operator) token, whatever READ_AUTH says
            assert (await call("GET", f"/v1/trades/{tid}/authorizations/dvp", "r" * 24))[1]["error"] == "forbidden"
            assert (await call("GET", f"/v1/trades/{tid}/authorizations/dvp", "s" * 24))[1]["error"] == \
                "not_same_ledger"  # past the role check: this trade is cross-chain
    finally:
        await close_engine(engine)


@pytest.fixture
def tls_redis(tmp_path: Path):
    """A redis-server serving TLS only, its default user off, one ACL user limited to the relayer's dvp: keys."""
    cert, key = self_signed(tmp_path)
    password = "acl-" + "p" * 28
    server = RedisProcess(port=free_port(), data_dir=tmp_path / "data", tls=(cert, key), extra_args=(
        "--user", "default", "off", "--user", "dvp", "on", f">{password}", "~dvp:*", "&*", "+@all")).start()
    yield server, cert, password
    server.stop()


async def test_a_worker_settles_through_redis_with_an_acl_user_over_tls(net: Net, tls_redis, capsys):
    server, cert, password = tls_redis
    url = f"rediss://dvp:{password}@127.0.0.1:{server.port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
    settings = net.settings([net.seller, net.buyer], redis_url=url)
    engine = build_engine(settings)
    await engine.start()
    try:
        signed = await net.instruction()
        tid = signed.instruction.tradeId
        assert await engine.intake(signed)
        assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
        keys = await engine.store.r.keys("*")
        assert keys and all(k.startswith("dvp:") for k in keys)  # the ACL allows ~dvp:* only: nothing else
    finally:
        await close_engine(engine)
    wrong = build_engine(net.settings([net.seller], redis_url=url.replace(password, "not-the-password")))
    with pytest.raises(ConfigError, match="refused the credentials"):
        await wrong.start()
    await close_engine(wrong)
    plain = Store.from_url(f"redis://127.0.0.1:{server.port}/0")  # no TLS: the server never answers in clear
    with pytest.raises((RedisError, OSError)):
        await plain.ping()
    await plain.close()
    assert password not in capsys.readouterr().out


async def test_an_rpc_behind_a_bearer_token_is_followed_with_it_and_refused_without(net: Net, capsys):
    """A node provider's endpoint: every request needs `Authorization: Bearer …` (a proxy in front of anvil)."""
    token = "Bearer node-" + "k" * 30
    upstream = net.doc["st"]["rpc_url"]
    seen = {"with": 0, "without": 0}

    async def proxy(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != token:
            seen["without"] += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        seen["with"] += 1
        async with aiohttp.ClientSession() as http:
            async with http.post(upstream, data=await request.read(),
                                 headers={"Content-Type": "application/json"}) as r:
                return web.Response(body=await r.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        bare = EvmChain("st", [f"http://127.0.0.1:{port}/"], attempts_per_url=1)
        with pytest.raises(LedgerError):
            await bare.connect()
        await bare.close()
        assert seen["without"] >= 1
        engine = await net.engine([net.seller, net.buyer], st_rpc_url=f"http://127.0.0.1:{port}/", st_rpc_auth=token)
        try:
            signed = await net.instruction()
            tid = signed.instruction.tradeId
            assert await engine.intake(signed)
            before = seen["without"]
            assert (await drive(engine, [tid], timeout=60))[tid] == TradeState.SETTLED
            assert seen["with"] > 10 and seen["without"] == before  # every request of the worker carried it
        finally:
            await close_engine(engine)
    finally:
        await runner.cleanup()
    assert token.split()[1] not in capsys.readouterr().out
