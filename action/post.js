'use strict';
// The action's post step: the binary main ran cleans up (main recorded its path in
// GITHUB_STATE only once there was something to clean up).

const { runStep } = require('./step');

const binary = process.env.STATE_binary;
if (binary) {
  runStep(binary, 'post').then((code) => {
    process.exitCode = code;
  });
} else {
  console.log('polars-cloud-auth: nothing to clean up');
}
