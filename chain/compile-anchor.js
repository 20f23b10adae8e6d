// Compiles chain/contracts/CheckpointAnchor.sol with the solc-js pinned in package.json and
// writes chain/artifacts/CheckpointAnchor.json (ABI and bytecode), or the path given as the
// first argument. The artifact is committed; tests/anchor_artifact.rs compiles again and checks
// that the committed file is byte for byte what this script writes, so the bytecode the product
// deploys is reproducible from the source.
//
//   node chain/compile-anchor.js            # rewrite the committed artifact
//   node chain/compile-anchor.js OUT.json   # write elsewhere (the test's check)
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const SOURCE = "CheckpointAnchor.sol";
const CONTRACT = "CheckpointAnchor";
// Fixed settings: the artifact depends on nothing but the source and the pinned compiler.
// `paris` avoids opcodes (PUSH0 and later) that some EVM chains still lack.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "paris",
  outputSelection: { [SOURCE]: { [CONTRACT]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

const out = process.argv[2] || path.join(__dirname, "artifacts", `${CONTRACT}.json`);
const source = fs.readFileSync(path.join(__dirname, "contracts", SOURCE), "utf8");
const input = { language: "Solidity", sources: { [SOURCE]: { content: source } }, settings: SETTINGS };
const output = JSON.parse(solc.compile(JSON.stringify(input)));

const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) {
  process.stderr.write(e.formattedMessage || e.message);
}
if (errors.length > 0) {
  process.exit(1);
}
const compiled = output.contracts[SOURCE][CONTRACT];
const artifact = {
  contractName: CONTRACT,
  sourceName: `chain/contracts/${SOURCE}`,
  compiler: `solc-js ${solc.version()}`,
  settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion },
  abi: compiled.abi,
  bytecode: "0x" + compiled.evm.bytecode.object,
  deployedBytecode: "0x" + compiled.evm.deployedBytecode.object,
};
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, JSON.stringify(artifact, null, 2) + "\n");
