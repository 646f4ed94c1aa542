'use strict';
// The installer against a fake release directory, served from file:// and from a loopback
// HTTP server (run with `node --test action/`; tests/github_action.rs runs it too).

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { after, before, describe, test } = require('node:test');
const { pathToFileURL } = require('node:url');

const { actionVersion, listedDigest, resolveBinary, target } = require('./install');

const VERSION = '1.2.3';
const ASSET = 'polars-cloud-auth-x86_64-unknown-linux-musl';
const BINARY = Buffer.from('#!/bin/sh\necho fake polars-cloud-auth\n');
const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');

const made = [];
function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pca-install-'));
  made.push(dir);
  return dir;
}
after(() => made.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

/** A release directory: releases/v1.2.3/{asset, SHA256SUMS}. */
function fakeRelease({ sums } = {}) {
  const root = tempDir();
  const dir = path.join(root, `v${VERSION}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, ASSET), BINARY);
  const listed = sums ?? `${'0'.repeat(64)}  polars-cloud-auth-aarch64-apple-darwin\n${sha256(BINARY)}  ${ASSET}\n`;
  fs.writeFileSync(path.join(dir, 'SHA256SUMS'), listed);
  return root;
}

function runnerEnv(releases, extra = {}) {
  return {
    RUNNER_OS: 'Linux',
    RUNNER_ARCH: 'X64',
    RUNNER_TOOL_CACHE: tempDir(),
    INPUT_VERSION: VERSION,
    POLARS_CLOUD_AUTH_RELEASES_URL: releases,
    ...extra,
  };
}

const quiet = () => {};

describe('from a loopback mirror', () => {
  let server;
  let base;
  let root;
  const requests = [];

  before(async () => {
    root = fakeRelease();
    server = http.createServer((req, res) => {
      requests.push(req.url);
      const file = path.join(root, decodeURIComponent(req.url).replace(/^\/releases\//, ''));
      if (fs.existsSync(file) && fs.statSync(file).isFile()) {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.end(fs.readFileSync(file));
      } else {
        res.writeHead(404);
        res.end('Not Found');
      }
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${server.address().port}/releases`;
  });

  after(() => server.close());

  test('downloads, verifies, caches, and reuses the cache', async () => {
    requests.length = 0;
    const env = runnerEnv(base);
    const binary = await resolveBinary(env, quiet);
    assert.equal(binary, path.join(env.RUNNER_TOOL_CACHE, 'polars-cloud-auth', VERSION, 'x86_64-unknown-linux-musl', 'polars-cloud-auth'));
    assert.deepEqual(fs.readFileSync(binary), BINARY);
    assert.equal(fs.statSync(binary).mode & 0o777, 0o755);
    assert.deepEqual(requests, [`/releases/v${VERSION}/SHA256SUMS`, `/releases/v${VERSION}/${ASSET}`]);

    requests.length = 0;
    assert.equal(await resolveBinary(env, quiet), binary);
    assert.deepEqual(requests, [], 'a cached binary is not downloaded again');

    // A cached binary that no longer matches its recorded digest is replaced.
    fs.writeFileSync(binary, 'tampered');
    assert.equal(await resolveBinary(env, quiet), binary);
    assert.deepEqual(fs.readFileSync(binary), BINARY);
    assert.equal(requests.length, 2);
  });

  test('a missing release is a clear error', async () => {
    const env = runnerEnv(base, { INPUT_VERSION: 'v9.9.9' });
    await assert.rejects(resolveBinary(env, quiet), /GET .*\/v9\.9\.9\/SHA256SUMS answered HTTP 404/);
  });
});

describe('checksum verification', () => {
  test('a binary whose digest differs from SHA256SUMS is refused and not installed', async () => {
    const root = fakeRelease({ sums: `${sha256(Buffer.from('something else'))}  ${ASSET}\n` });
    const env = runnerEnv(pathToFileURL(root).href);
    await assert.rejects(resolveBinary(env, quiet), (e) => {
      assert.match(e.message, /^checksum mismatch for polars-cloud-auth-x86_64-unknown-linux-musl of release v1\.2\.3: /);
      assert.match(e.message, new RegExp(`the download is ${sha256(BINARY)}; nothing was installed$`));
      return true;
    });
    assert.equal(fs.existsSync(path.join(env.RUNNER_TOOL_CACHE, 'polars-cloud-auth')), false);
  });

  test('an asset SHA256SUMS does not list is refused', async () => {
    const root = fakeRelease({ sums: `${sha256(BINARY)}  polars-cloud-auth-x86_64-apple-darwin\n` });
    await assert.rejects(resolveBinary(runnerEnv(pathToFileURL(root).href), quiet), /SHA256SUMS of release v1\.2\.3 lists no polars-cloud-auth-x86_64-unknown-linux-musl/);
  });

  test('a file:// mirror with a good digest installs', async () => {
    const env = runnerEnv(pathToFileURL(fakeRelease()).href);
    assert.deepEqual(fs.readFileSync(await resolveBinary(env, quiet)), BINARY);
  });

  test('SHA256SUMS lines are read in sha256sum format, binary mode too', () => {
    const digest = 'A'.repeat(64);
    assert.equal(listedDigest(`${digest} *x.exe\r\n`, 'x.exe'), 'a'.repeat(64));
    assert.equal(listedDigest(`${digest}  x\n`, 'x.exe'), null);
    assert.equal(listedDigest('not a digest  x\n', 'x'), null);
  });
});

describe('choosing the binary', () => {
  test('binary-path wins and must be a file', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'pca');
    fs.writeFileSync(file, BINARY);
    assert.equal(await resolveBinary({ 'INPUT_BINARY-PATH': file }, quiet), file);
    await assert.rejects(resolveBinary({ 'INPUT_BINARY-PATH': path.join(dir, 'missing') }, quiet), /binary-path '.*missing' is not a file/);
  });

  test('every runner platform maps to a release asset', () => {
    assert.equal(target({ RUNNER_OS: 'Windows', RUNNER_ARCH: 'X64' }).asset, 'polars-cloud-auth-x86_64-pc-windows-msvc.exe');
    assert.equal(target({ RUNNER_OS: 'Windows', RUNNER_ARCH: 'X64' }).binary, 'polars-cloud-auth.exe');
    assert.equal(target({ RUNNER_OS: 'macOS', RUNNER_ARCH: 'ARM64' }).asset, 'polars-cloud-auth-aarch64-apple-darwin');
    assert.equal(target({ RUNNER_OS: 'Linux', RUNNER_ARCH: 'ARM64' }).asset, 'polars-cloud-auth-aarch64-unknown-linux-musl');
    assert.throws(() => target({ RUNNER_OS: 'Windows', RUNNER_ARCH: 'ARM64' }), /no polars-cloud-auth release for Windows\/ARM64 .*set binary-path/);
  });

  test('the version defaults to the [package] version of the action', () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'Cargo.toml'), '[workspace]\nversion = "9.9.9"\n\n[package]\nname = "x"\nversion = "0.4.1"\n\n[dependencies]\nfoo = { version = "1" }\n');
    assert.equal(actionVersion(dir), '0.4.1');
    assert.match(actionVersion(), /^\d+\.\d+\.\d+/);
  });

  test('bad versions and plain http mirrors are refused', async () => {
    await assert.rejects(resolveBinary(runnerEnv('https://mirror.invalid', { INPUT_VERSION: 'latest' }), quiet), /version 'latest' is not a release version/);
    await assert.rejects(resolveBinary(runnerEnv('http://mirror.invalid/releases'), quiet), /refusing plain http to mirror\.invalid: use https/);
  });
});
