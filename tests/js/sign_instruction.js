// Signs a trade instruction with ethers.js v6, independently of the project's Python signing code.
// usage: node sign_instruction.js <private key> <domain salt 0x..32 bytes>  (instruction JSON on stdin)
// prints {"instruction": ..., "signature": ...} as POST /v1/trades takes it.
const { Wallet } = require("ethers");

const [key, salt] = process.argv.slice(2);
const domain = { name: "DvP Trade Instruction", version: "2", salt };
const types = { TradeInstruction: [
  { name: "tradeId", type: "bytes32" }, { name: "stChainId", type: "uint256" },
  { name: "stToken", type: "address" }, { name: "stAmount", type: "uint256" },
  { name: "scChainId", type: "uint256" }, { name: "scToken", type: "address" },
  { name: "scAmount", type: "uint256" }, { name: "sellerStAccount", type: "address" },
  { name: "sellerScAccount", type: "address" }, { name: "buyerScAccount", type: "address" },
  { name: "buyerStAccount", type: "address" }, { name: "deadline", type: "uint64" } ] };

let input = "";
process.stdin.on("data", (c) => { input += c; });
process.stdin.on("end", async () => {
  const instruction = JSON.parse(input);
  const signature = await new Wallet(key).signTypedData(domain, types, instruction);
  process.stdout.write(JSON.stringify({ instruction, signature }));
});
