'use strict';
// Runs `polars-cloud-auth github-action <step>` with the runner's stdio, so the binary's
// workflow commands (::add-mask::, ::error::) reach the runner directly.

const { spawn } = require('node:child_process');

/** Escapes a workflow command's message the way the runner unescapes it. */
function escapeData(text) {
  return String(text).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

/** An error annotation on the step. */
function fail(message) {
  process.stdout.write(`::error::${escapeData(message)}\n`);
}

/** Resolves to the binary's exit code (1 when it could not run or was killed). */
function runStep(binary, step) {
  return new Promise((resolve) => {
    const child = spawn(binary, ['github-action', step], { stdio: 'inherit', windowsHide: true });
    child.on('error', (e) => {
      fail(`could not run ${binary}: ${e.message}`);
      resolve(1);
    });
    child.on('exit', (code, signal) => {
      if (code === null) {
        fail(`${binary} was stopped by ${signal}`);
      }
      resolve(code === null ? 1 : code);
    });
  });
}

module.exports = { escapeData, fail, runStep };
