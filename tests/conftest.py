"""Shared fixtures: real anvil chains and a real throw-away Redis on free ports."""

from __future__ import annotations

import pytest

from adapters.evm import EvmChain
from deploy.processes import AnvilProcess, RedisProcess, free_port
from tests.chain_kit import Kit, dev_accounts


@pytest.fixture(scope="session")
def anvil_auto():
    """An automining anvil (a block per transaction) for contract tests."""
    node = AnvilProcess(chain_id=31337, port=free_port()).start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
async def kit(anvil_auto) -> Kit:
    chain = EvmChain("test", [anvil_auto.url])
    await chain.connect()
    yield Kit(chain, dev_accounts())
    await chain.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.relayer_kit import TEST_DATABASES

    server = RedisProcess(port=free_port(), data_dir=tmp_path_factory.mktemp("redis"),
                          extra_args=("--databases", str(TEST_DATABASES))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def net(redis_server, tmp_path_factory):
    """Two anvils mining every 0.5 s (ST chain, coin ledger) with contracts and demo balances, and a Redis.

    Interval mining, like real chains: automine stamps each block at least 1 s after the previous one, so a
    burst of transactions runs one chain's clock ahead of the other's.
    """
    from tests.relayer_kit import two_chain_net

    async for two in two_chain_net(redis_server, "own", 17001, 17002):
        yield two


@pytest.fixture(scope="session")
async def one_chain(redis_server):
    """ONE anvil holding both the security token and the stablecoin (the same-ledger path), and a Redis."""
    from deploy.devnet import DevnetOptions, _deploy
    from relayer.secrets import generate_key
    from tests.relayer_kit import Net

    node = AnvilProcess(chain_id=17003, port=free_port(), block_time=0.5).start()
    doc = await _deploy(DevnetOptions(st_standard="own"), node.url, node.url, redis_server.url)
    chain = EvmChain("st", [node.url])
    await chain.connect()
    yield Net(doc, redis_server.port, chain, chain, generate_key())
    await chain.close()
    node.stop()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory):
    """A real SoftHSM2 with one token "dvp-test" (PIN in a mode-600 file). SoftHSM reads its config once per
    process, so this process (and the workers it starts) keep this directory for the whole session."""
    import os

    from deploy.softhsm import SoftHsm

    hsm = SoftHsm(tmp_path_factory.mktemp("softhsm"))
    os.environ.update(hsm.env())
    hsm.init_token("dvp-test", pin="271828", so_pin="314159")
    return hsm


@pytest.fixture(autouse=True)
async def chain_clocks_left_together(request):
    """The `net` chains are shared by the whole session: a test that leaves their clocks apart (a deep anvil_reorg
    sets a chain's clock back for good) makes every later trade refuse to lock at the clock-difference gate, and
    the failures show far from their cause. This names the test that did it."""
    yield
    if "net" not in request.fixturenames:
        return
    net = request.getfixturevalue("net")
    apart = abs(await net.st.now() - await net.sc.now())
    assert apart <= 3, f"{request.node.nodeid} left the net's chain clocks {apart} s apart (use Net.reorg / Net.warp)"
