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
    server = RedisProcess(port=free_port(), data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
