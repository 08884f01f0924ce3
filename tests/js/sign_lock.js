// Signs a holder's lock authorisation with ethers.js v6, independently of the relayer's Python code: the EIP-712
// types are written here from docs/holder-signed-locks.md; only the values come from the relayer's answer.
// usage: node sign_lock.js <private key> [JSON of Lock fields to change before signing]
//   stdin: the answer of GET /v1/trades/{id}/authorizations/{leg}
//   stdout: the body of POST /v1/trades/{id}/authorizations (with an ERC-2612 permit when one is asked for)
const { Wallet, Signature } = require("ethers");

const LOCK = [
  { name: "tradeId", type: "bytes32" }, { name: "token", type: "address" }, { name: "amount", type: "uint256" },
  { name: "receiver", type: "address" }, { name: "hashlock", type: "bytes32" }, { name: "timelock", type: "uint64" },
  { name: "nonce", type: "uint256" }, { name: "deadline", type: "uint256" } ];
const PERMIT = [
  { name: "owner", type: "address" }, { name: "spender", type: "address" }, { name: "value", type: "uint256" },
  { name: "nonce", type: "uint256" }, { name: "deadline", type: "uint256" } ];

const [key, changes] = process.argv.slice(2);
let input = "";
process.stdin.on("data", (c) => { input += c; });
process.stdin.on("end", async () => {
  const request = JSON.parse(input);
  const wallet = new Wallet(key);
  const { chainId, verifyingContract } = request.typed_data.domain;
  const domain = { name: "DvpHashedTimelockEscrow", version: "1", chainId, verifyingContract };
  const lock = { ...request.typed_data.message, ...(changes ? JSON.parse(changes) : {}) };
  const body = { leg: request.leg, lock, signature: await wallet.signTypedData(domain, { Lock: LOCK }, lock) };
  if (request.permit_typed_data) {
    const p = request.permit_typed_data;
    const sig = Signature.from(await wallet.signTypedData(p.domain, { Permit: PERMIT }, p.message));
    body.permit = { value: String(p.message.value), deadline: p.message.deadline, v: sig.v, r: sig.r, s: sig.s };
  }
  process.stdout.write(JSON.stringify(body));
});
