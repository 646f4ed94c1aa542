'use strict';
// The action's main step: find (or install) the binary, then let it do the work.

const { resolveBinary } = require('./install');
const { fail, runStep } = require('./step');

resolveBinary()
  .then((binary) => runStep(binary, 'main'))
  .catch((e) => {
    fail(`failed to install polars-cloud-auth: ${e.message}`);
    return 1;
  })
  .then((code) => {
    process.exitCode = code;
  });
