'use strict';
// Finds the polars-cloud-auth binary for this runner: the `binary-path` input, else the
// tool cache, else the GitHub release of `version` (by default the version of this
// checkout of the action, from Cargo.toml), whose SHA-256 must match the release's
// SHA256SUMS before it is cached or run. Plain Node, no dependencies.

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { fileURLToPath } = require('node:url');

const PLATFORMS = require('./platforms.json');

const NAME = 'polars-cloud-auth';
const CHECKSUMS = 'SHA256SUMS';
const ACTION_ROOT = path.resolve(__dirname, '..');
const VERSION = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/;
const DOWNLOAD_ATTEMPTS = 3;
const DOWNLOAD_TIMEOUT_MS = 120000;

/** An input the way the runner passes it: INPUT_<NAME>, upper-cased, dashes kept. */
function input(env, name) {
  return (env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] || '').trim();
}

/** The release target and asset name for a runner (RUNNER_OS / RUNNER_ARCH). */
function target(env) {
  const runnerOs = env.RUNNER_OS || { linux: 'Linux', darwin: 'macOS', win32: 'Windows' }[process.platform];
  const arch = env.RUNNER_ARCH || { x64: 'X64', arm64: 'ARM64' }[process.arch];
  const triple = PLATFORMS[runnerOs] && PLATFORMS[runnerOs][arch];
  if (!triple) {
    const known = Object.entries(PLATFORMS)
      .flatMap(([o, archs]) => Object.keys(archs).map((a) => `${o}/${a}`))
      .join(', ');
    throw new Error(
      `no ${NAME} release for ${runnerOs}/${arch} (released for ${known}): set binary-path to a binary built for this runner`,
    );
  }
  const exe = runnerOs === 'Windows' ? '.exe' : '';
  return { triple, asset: `${NAME}-${triple}${exe}`, binary: `${NAME}${exe}` };
}

/** The version in the [package] table of the action's Cargo.toml. */
function actionVersion(root = ACTION_ROOT) {
  const text = fs.readFileSync(path.join(root, 'Cargo.toml'), 'utf8');
  const table = text.split(/^\[/m).find((t) => t.startsWith('package]'));
  const found = table && table.match(/^version\s*=\s*"([^"]+)"/m);
  if (!found) {
    throw new Error(`no [package] version in ${path.join(root, 'Cargo.toml')}: set the version input`);
  }
  return found[1];
}

/** Where releases are downloaded from; POLARS_CLOUD_AUTH_RELEASES_URL points at a mirror. */
function releasesUrl(env) {
  if (env.POLARS_CLOUD_AUTH_RELEASES_URL) {
    return env.POLARS_CLOUD_AUTH_RELEASES_URL.replace(/\/+$/, '');
  }
  // Set for `uses: owner/repo@ref`; `uses: ./` is this repository.
  const repo = env.GITHUB_ACTION_REPOSITORY || env.GITHUB_REPOSITORY;
  if (!repo) {
    throw new Error('cannot tell which repository the action comes from: set binary-path');
  }
  const server = (env.GITHUB_SERVER_URL || 'https://github.com').replace(/\/+$/, '');
  return `${server}/${repo}/releases/download`;
}

function isLoopback(hostname) {
  return ['localhost', '127.0.0.1', '[::1]', '::1'].includes(hostname) || hostname.startsWith('127.');
}

function describe(error) {
  const cause = error && error.cause;
  return cause ? `${error.message} (${cause.code || cause.message})` : String(error && error.message);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The bytes at `url` (https, loopback http, or file), retrying transient failures. */
async function download(url) {
  const parsed = new URL(url);
  if (parsed.protocol === 'file:') {
    try {
      return fs.readFileSync(fileURLToPath(parsed));
    } catch (e) {
      throw new Error(`cannot read ${url}: ${e.code || e.message}`);
    }
  }
  if (parsed.protocol === 'http:' && !isLoopback(parsed.hostname)) {
    throw new Error(`refusing plain http to ${parsed.host}: use https`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new Error(`unsupported URL scheme in ${url}: use https`);
  }
  let last;
  for (let attempt = 1; attempt <= DOWNLOAD_ATTEMPTS; attempt += 1) {
    try {
      const response = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) });
      if (response.ok) {
        return Buffer.from(await response.arrayBuffer());
      }
      last = new Error(`GET ${url} answered HTTP ${response.status}`);
      if (response.status < 500 && response.status !== 429) {
        last.permanent = true;
      }
    } catch (e) {
      last = new Error(`GET ${url} failed: ${describe(e)}`);
    }
    if (last.permanent) {
      break;
    }
    if (attempt < DOWNLOAD_ATTEMPTS) {
      await sleep(1000 * attempt * (0.5 + Math.random()));
    }
  }
  throw last;
}

function sha256(bytes) {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

/** The digest SHA256SUMS (`sha256sum` format) lists for `asset`, or null. */
function listedDigest(sums, asset) {
  for (const line of sums.split(/\r?\n/)) {
    const found = line.match(/^([0-9a-fA-F]{64})\s+\*?(.+?)\s*$/);
    if (found && found[2] === asset) {
      return found[1].toLowerCase();
    }
  }
  return null;
}

function cacheLayout(env, version, platform) {
  const root = env.RUNNER_TOOL_CACHE || env.RUNNER_TEMP || os.tmpdir();
  const dir = path.join(root, NAME, version, platform.triple);
  return { dir, binary: path.join(dir, platform.binary), digest: path.join(dir, `${platform.binary}.sha256`) };
}

/** The cached binary when it is whole (its digest matches the one recorded at install). */
function cached(cache) {
  try {
    const recorded = fs.readFileSync(cache.digest, 'utf8').trim();
    return recorded === sha256(fs.readFileSync(cache.binary));
  } catch {
    return false;
  }
}

function writeAtomic(file, bytes, mode) {
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  try {
    fs.writeFileSync(tmp, bytes, { mode });
    fs.chmodSync(tmp, mode);
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** The path of the binary to run, installing it first when needed. */
async function resolveBinary(env = process.env, log = console.log) {
  const given = input(env, 'binary-path');
  if (given) {
    const file = path.resolve(env.GITHUB_WORKSPACE || process.cwd(), given);
    if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
      throw new Error(`binary-path '${given}' is not a file`);
    }
    return file;
  }
  const version = (input(env, 'version') || actionVersion()).replace(/^v/, '');
  if (!VERSION.test(version)) {
    throw new Error(`version '${version}' is not a release version such as 1.2.3`);
  }
  const platform = target(env);
  const cache = cacheLayout(env, version, platform);
  if (cached(cache)) {
    log(`${NAME} ${version} (${platform.triple}) from the tool cache`);
    return cache.binary;
  }
  const base = `${releasesUrl(env)}/v${version}`;
  const sums = (await download(`${base}/${CHECKSUMS}`)).toString('utf8');
  const expected = listedDigest(sums, platform.asset);
  if (!expected) {
    throw new Error(`${CHECKSUMS} of release v${version} lists no ${platform.asset}`);
  }
  const bytes = await download(`${base}/${platform.asset}`);
  const actual = sha256(bytes);
  if (actual !== expected) {
    throw new Error(
      `checksum mismatch for ${platform.asset} of release v${version}: ${CHECKSUMS} says ${expected}, the download is ${actual}; nothing was installed`,
    );
  }
  fs.mkdirSync(cache.dir, { recursive: true });
  writeAtomic(cache.binary, bytes, 0o755);
  writeAtomic(cache.digest, `${actual}\n`, 0o644);
  log(`${NAME} ${version} (${platform.triple}) installed, SHA-256 ${actual} verified`);
  return cache.binary;
}

module.exports = { actionVersion, input, listedDigest, resolveBinary, target };
