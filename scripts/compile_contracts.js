#!/usr/bin/env node
// Compile every Solidity source under contracts/ with the pinned solcjs (standard JSON) and
// write one artifact per contract to contracts/out/<ContractName>.json.
//
// Guarantees:
//  - The same sources and compiler give byte-identical artifacts (sorted keys, two-space
//    indentation, trailing newline), so the committed artifacts can be checked in CI.
//  - `--check` compiles in memory, writes nothing, and exits 1 naming every artifact that is
//    missing, stale or different from a fresh compile.
//  - Any compiler error exits 2 before anything is written.
//
// Usage: node scripts/compile_contracts.js [--check]

'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const CONTRACTS_DIR = path.join(ROOT, 'contracts');
const OUT_DIR = path.join(CONTRACTS_DIR, 'out');
const NODE_MODULES = path.join(ROOT, 'node_modules');
const EXPECTED_COMPILER = '0.8.28';

// Optimizer runs: 200 is the solc default trade-off between deploy size and call cost;
// cancun is the newest EVM BNB Chain runs that solc 0.8.28 targets without surprises.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: {
    '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'metadata'] },
  },
};

function loadSolc() {
  try {
    return require('solc');
  } catch (err) {
    process.stderr.write(`cannot load solc (${err.message}); run make setup (npm ci)\n`);
    process.exit(2);
  }
}

// Source unit names are paths relative to the project root with forward slashes, so that the
// metadata (and with it the bytecode's metadata hash) does not depend on where the checkout is.
function unitName(absPath) {
  return path.relative(ROOT, absPath).split(path.sep).join('/');
}

function findSources(dir) {
  const found = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (full !== OUT_DIR) found.push(...findSources(full));
    } else if (entry.isFile() && entry.name.endsWith('.sol')) {
      found.push(full);
    }
  }
  return found;
}

// Imports the compiler could not find among the given sources: packages from node_modules
// (`@openzeppelin/...`) and, defensively, other project-relative paths.
function findImport(importPath) {
  const candidates = [path.join(NODE_MODULES, importPath), path.join(ROOT, importPath)];
  for (const candidate of candidates) {
    const resolved = path.resolve(candidate);
    if (!resolved.startsWith(ROOT + path.sep)) continue;
    if (fs.existsSync(resolved) && fs.statSync(resolved).isFile()) {
      return { contents: fs.readFileSync(resolved, 'utf8') };
    }
  }
  return { error: `import not found: ${importPath} (run make setup to install node_modules)` };
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const sorted = {};
    for (const key of Object.keys(value).sort()) sorted[key] = sortKeys(value[key]);
    return sorted;
  }
  return value;
}

function render(value) {
  return JSON.stringify(sortKeys(value), null, 2) + '\n';
}

function sha256(text) {
  return '0x' + crypto.createHash('sha256').update(text).digest('hex');
}

function compile(solc) {
  const version = solc.version();
  if (!version.startsWith(EXPECTED_COMPILER + '+')) {
    process.stderr.write(`solc ${version} found, ${EXPECTED_COMPILER} expected; run make setup\n`);
    process.exit(2);
  }
  const files = findSources(CONTRACTS_DIR).sort();
  const sources = {};
  for (const file of files) sources[unitName(file)] = { content: fs.readFileSync(file, 'utf8') };
  const input = { language: 'Solidity', sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));

  const problems = output.errors || [];
  for (const problem of problems) process.stderr.write(problem.formattedMessage + '\n');
  if (problems.some((p) => p.severity === 'error')) {
    process.stderr.write('compilation failed\n');
    process.exit(2);
  }

  const artifacts = new Map();
  for (const unit of Object.keys(sources)) {
    const contracts = output.contracts[unit] || {};
    for (const name of Object.keys(contracts).sort()) {
      if (artifacts.has(name)) {
        process.stderr.write(`contract name ${name} is defined twice; artifacts are keyed by name\n`);
        process.exit(2);
      }
      const compiled = contracts[name];
      const metadata = JSON.parse(compiled.metadata);
      // The hash covers the compiler, the settings and every source the contract was built
      // from (its own file and all it imports), so it changes whenever the bytecode may.
      const sourceKeccaks = {};
      for (const dep of Object.keys(metadata.sources)) {
        sourceKeccaks[dep] = metadata.sources[dep].keccak256;
      }
      const sourceHash = sha256(
        render({ compiler: version, settings: SETTINGS, sources: sourceKeccaks }),
      );
      artifacts.set(
        name,
        render({
          contractName: name,
          abi: compiled.abi,
          bytecode: '0x' + compiled.evm.bytecode.object,
          deployedBytecode: '0x' + compiled.evm.deployedBytecode.object,
          sourceHash,
        }),
      );
    }
  }
  return artifacts;
}

function existingArtifacts() {
  if (!fs.existsSync(OUT_DIR)) return [];
  return fs.readdirSync(OUT_DIR).filter((f) => f.endsWith('.json')).sort();
}

function check(artifacts) {
  const differing = [];
  for (const [name, text] of artifacts) {
    const file = path.join(OUT_DIR, `${name}.json`);
    if (!fs.existsSync(file)) differing.push(`${name} (missing)`);
    else if (fs.readFileSync(file, 'utf8') !== text) differing.push(`${name} (differs)`);
  }
  for (const file of existingArtifacts()) {
    const name = file.slice(0, -'.json'.length);
    if (!artifacts.has(name)) differing.push(`${name} (no longer has a source)`);
  }
  if (differing.length > 0) {
    process.stderr.write(
      'contracts/out is out of date; run node scripts/compile_contracts.js\n  ' +
        differing.join('\n  ') +
        '\n',
    );
    process.exit(1);
  }
  process.stdout.write(`contracts/out matches a fresh compile (${artifacts.size} artifacts)\n`);
}

function write(artifacts) {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  let changed = 0;
  for (const [name, text] of artifacts) {
    const file = path.join(OUT_DIR, `${name}.json`);
    if (fs.existsSync(file) && fs.readFileSync(file, 'utf8') === text) continue;
    // Write-then-rename, so a reader never sees half an artifact.
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
    changed += 1;
  }
  let removed = 0;
  for (const file of existingArtifacts()) {
    if (!artifacts.has(file.slice(0, -'.json'.length))) {
      fs.unlinkSync(path.join(OUT_DIR, file));
      removed += 1;
    }
  }
  process.stdout.write(
    `compiled ${artifacts.size} contracts: ${changed} artifacts written, ${removed} stale removed\n`,
  );
}

function main(argv) {
  const unknown = argv.filter((arg) => arg !== '--check');
  if (unknown.length > 0) {
    process.stderr.write(`unknown argument(s): ${unknown.join(' ')}\nusage: compile_contracts.js [--check]\n`);
    process.exit(2);
  }
  const artifacts = compile(loadSolc());
  if (argv.includes('--check')) check(artifacts);
  else write(artifacts);
}

main(process.argv.slice(2));
