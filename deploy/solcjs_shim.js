#!/usr/bin/env node
// A `solc`-compatible executable for py-solc-x, backed by the npm `solc` package (solcjs, WebAssembly).
// It answers the two things py-solc-x asks: `--version` and `--standard-json` (input on stdin).
// The CLI `solcjs --standard-json` prints a warning line before its JSON, so drive the JS API instead.
// All sources arrive inline in the standard JSON, so no import callback is needed.
'use strict';
const path = require('path');
const solc = require(path.join(__dirname, '..', 'node_modules', 'solc'));

const args = process.argv.slice(2);
if (args.includes('--version')) {
  process.stdout.write('solc, the solidity compiler commandline interface\nVersion: ' + solc.version() + '\n');
  process.exit(0);
}
if (args.includes('--standard-json')) {
  const chunks = [];
  process.stdin.on('data', (c) => chunks.push(c));
  process.stdin.on('end', () => {
    process.stdout.write(solc.compile(Buffer.concat(chunks).toString('utf8')));
  });
} else {
  process.stderr.write('solcjs_shim: only --version and --standard-json are supported\n');
  process.exit(2);
}
