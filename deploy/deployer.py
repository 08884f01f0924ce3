"""Deploy the escrow and tokens to any EVM endpoint, and set up balances for a local devnet."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from adapters.evm import EvmChain, TxSender
from adapters.contracts import bytecode_for, load_artifacts

MAX_UINT256 = 2**256 - 1


@dataclass
class ChainDeployment:
    """What a relayer needs to know about one chain after deployment."""

    name: str
    chain_id: int
    rpc_url: str
    escrow: str
    tokens: dict[str, str] = field(default_factory=dict)  # symbol -> address
    deploy_block: int = 0
    dvp: str = ""  # AtomicDvP (ST chain only): the same-ledger path when the SC is on this chain too
    standard: str = "own"  # the token: "own" (SecurityToken / Stablecoin) or "erc3643" (a T-REX suite)
    trex: dict[str, Any] = field(default_factory=dict)  # the T-REX suite's addresses (deploy.trex.TrexSuite)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def contract_data(name: str, *ctor_args: Any, evm_version: str = "cancun") -> str:
    """Creation bytecode of a compiled contract (built for `evm_version`) with its constructor arguments."""
    art = load_artifacts()[name]
    factory = AsyncWeb3().eth.contract(abi=art["abi"], bytecode=bytecode_for(name, evm_version))
    return factory.constructor(*ctor_args).data_in_transaction


def encode_call(contract_name: str, fn: str, *args: Any) -> str:
    art = load_artifacts()[contract_name]
    return AsyncWeb3().eth.contract(abi=art["abi"]).encode_abi(fn, args=list(args))


async def deploy(sender: TxSender, name: str, *ctor_args: Any, evm_version: str = "cancun") -> str:
    receipt = await sender.transact(None, contract_data(name, *ctor_args, evm_version=evm_version))
    return str(receipt["contractAddress"])


async def deploy_chain(
    chain: EvmChain,
    deployer: LocalAccount,
    *,
    kind: str,
    token_name: str,
    token_symbol: str,
    token_decimals: int = 0,
    standard: str = "own",
    evm_version: str = "cancun",
) -> ChainDeployment:
    """Deploy the escrow and one permissioned token (kind 'st' = SecurityToken, 'sc' = Stablecoin; with
    standard 'erc3643' on an ST chain a T-REX suite instead, the escrow registered as a verified holder), built
    for the EVM the chain runs (`evm_version` london for a pre-Shanghai chain)."""
    chain_id = await chain.connect()
    start_block = await chain.block_number()
    sender = TxSender(chain, deployer)
    escrow = await deploy(sender, "HashedTimelockEscrow", evm_version=evm_version)
    if kind == "st" and standard == "erc3643":
        from deploy import trex

        dvp = await deploy(sender, "AtomicDvP", evm_version=evm_version)  # before the suite: the suite's pipeline takes the next nonces
        suite = await trex.deploy_suite(chain, deployer, name=token_name, symbol=token_symbol,
                                        decimals=token_decimals)
        await trex.register(chain, deployer, suite, escrow)
        return ChainDeployment(name=chain.name, chain_id=chain_id, rpc_url=chain.active_url, escrow=escrow,
                               tokens={token_symbol: suite.token}, deploy_block=start_block,
                               dvp=dvp, standard="erc3643", trex=suite.to_dict())
    if standard != "own":
        raise ValueError(f"unknown token standard {standard!r} for a {kind} ledger: expected 'own' or 'erc3643'")
    if kind == "st":
        token = await deploy(sender, "SecurityToken", token_name, token_symbol, deployer.address,
                             evm_version=evm_version)
    elif kind == "sc":
        token = await deploy(sender, "Stablecoin", token_name, token_symbol, token_decimals, deployer.address,
                             evm_version=evm_version)
    else:
        raise ValueError(f"unknown ledger kind {kind!r}: expected 'st' or 'sc'")
    token_contract = "SecurityToken" if kind == "st" else "Stablecoin"
    await sender.transact(token, encode_call(token_contract, "setAllowed", [escrow], True))
    dvp = await deploy(sender, "AtomicDvP", evm_version=evm_version) if kind == "st" else ""
    return ChainDeployment(
        name=chain.name,
        chain_id=chain_id,
        rpc_url=chain.active_url,
        escrow=escrow,
        tokens={token_symbol: token},
        deploy_block=start_block,
        dvp=dvp,
    )


async def onboard_holder(
    chain: EvmChain,
    issuer: LocalAccount,
    holder: LocalAccount,
    deployment: ChainDeployment,
    *,
    kind: str,
    issue_amount: int,
) -> None:
    """Allowlist a holder (ERC-3643: an ONCHAINID with a KYC claim, registered), issue it tokens and let it
    approve the escrow (a devnet convenience)."""
    if deployment.standard == "erc3643":
        from deploy import trex

        suite = trex.TrexSuite(**deployment.trex)
        await trex.register(chain, issuer, suite, holder.address)
        deployment.trex = suite.to_dict()
        if issue_amount:
            await trex.agent_call(chain, issuer, suite, "mint", holder.address, issue_amount)
        await TxSender(chain, holder).transact(suite.token, trex.call_data("Token", "approve", deployment.escrow,
                                                                           MAX_UINT256))
        return
    token_contract = "SecurityToken" if kind == "st" else "Stablecoin"
    token = next(iter(deployment.tokens.values()))
    issuer_tx = TxSender(chain, issuer)
    await issuer_tx.transact(token, encode_call(token_contract, "setAllowed", [holder.address], True))
    if issue_amount:
        if kind == "st":
            data = encode_call(token_contract, "issue", holder.address, issue_amount)
        else:
            data = encode_call(token_contract, "issue", holder.address, issue_amount, b"\x00" * 32)
        await issuer_tx.transact(token, data)
    holder_tx = TxSender(chain, holder)
    await holder_tx.transact(token, encode_call(token_contract, "approve", deployment.escrow, MAX_UINT256))
