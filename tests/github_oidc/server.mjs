#!/usr/bin/env node
// A local stand-in of GitHub Actions' OIDC ID-token service, for tests: GitHub's real
// service (token.actions.githubusercontent.com, and the per-job request URL a runner gets)
// only answers jobs running on GitHub, so a test on this machine cannot use it.
//
// What it does, the way GitHub's does (see README.md beside this file):
// - the job's request endpoint: GET <request_url>&audience=AUD with
//   `Authorization: Bearer <request_token>` answers {"value":"<JWT>"};
//   a missing or wrong bearer is 401;
// - the JWT: RS256, header {typ, alg, x5t, kid}, GitHub's claim shape (iss, sub
//   `repo:OWNER/NAME:ref:refs/heads/main`, aud = the requested audience, or
//   https://github.com/OWNER without one, jti, nbf = iat - 300, exp = iat + 6 h, and the
//   repository/run/workflow claims), signed by a key made at start;
// - the issuer's discovery document and JWKS at /.well-known/openid-configuration and
//   /.well-known/jwks (GitHub's paths), over HTTPS (GH_OIDC_TLS_CERT, GH_OIDC_TLS_KEY).
//
// stdout carries one line once it serves:
//   {"issuer":"https://127.0.0.1:PORT","port":PORT,"request_url":"...","request_token":"..."}
// Everything else goes to stderr. It exits when stdin reaches EOF and on SIGTERM/SIGINT.
// Test hooks, on a second, plain-http loopback port (`hooks_port` in the ready line):
// GET /__test/requests lists the token requests (audience, whether the bearer was right,
// the status, and the JWT handed out); GET /__test/ref?value=refs/heads/x changes the ref
// of the job (and so the `sub`) from the next token on; GET /__test/forge?value=1 signs the
// next tokens with another key, one the JWKS does not list (value=0 goes back).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

const log = (...args) => console.error('[github-oidc]', ...args);

const cert = process.env.GH_OIDC_TLS_CERT;
const key = process.env.GH_OIDC_TLS_KEY;
if (!cert || !key) {
  log('GH_OIDC_TLS_CERT and GH_OIDC_TLS_KEY (PEM files) are required: the issuer is https');
  process.exit(2);
}
const PORT = Number(process.env.GH_OIDC_PORT ?? 0);
const REPOSITORY = process.env.GH_OIDC_REPOSITORY ?? 'octo-org/octo-repo';
let REF = process.env.GH_OIDC_REF ?? 'refs/heads/main';
const OWNER = REPOSITORY.split('/')[0];
const REQUEST_TOKEN = process.env.GH_OIDC_REQUEST_TOKEN ?? crypto.randomBytes(24).toString('base64url');
// GitHub's request URL: the job's token endpoint on the pipelines service, api-version 2.0.
const REQUEST_PATH = '/00000000-0000-0000-0000-000000000000/_apis/distributedtask/hubs/Actions/plans/11111111-1111-1111-1111-111111111111/jobs/22222222-2222-2222-2222-222222222222/idtoken';

const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = publicKey.export({ format: 'jwk' });
// GitHub's kid and x5t are certificate thumbprints; here the key's JWK thumbprint.
const thumbprint = crypto
  .createHash('sha256')
  .update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n }))
  .digest('base64url');
const KID = thumbprint.slice(0, 27);

// A key no JWKS lists: tokens signed with it must be refused by whoever verifies them.
const forger = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
let forge = false;

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

let issuer = '';
let runNumber = 0;
const requests = [];

function idToken(audience) {
  const iat = Math.floor(Date.now() / 1000);
  runNumber += 1;
  const claims = {
    jti: crypto.randomUUID(),
    sub: `repo:${REPOSITORY}:ref:${REF}`,
    aud: audience ?? `https://github.com/${OWNER}`,
    ref: REF,
    sha: 'e4c7e0cbc7b35a3dd4cd1a2cc6b3e9f7e1d7a8b1',
    repository: REPOSITORY,
    repository_id: '123456789',
    repository_owner: OWNER,
    repository_owner_id: '987654',
    repository_visibility: 'private',
    run_id: '5550001',
    run_number: String(runNumber),
    run_attempt: '1',
    runner_environment: 'github-hosted',
    actor: 'octocat',
    actor_id: '583231',
    workflow: 'deploy',
    workflow_ref: `${REPOSITORY}/.github/workflows/deploy.yml@${REF}`,
    workflow_sha: 'e4c7e0cbc7b35a3dd4cd1a2cc6b3e9f7e1d7a8b1',
    job_workflow_ref: `${REPOSITORY}/.github/workflows/deploy.yml@${REF}`,
    job_workflow_sha: 'e4c7e0cbc7b35a3dd4cd1a2cc6b3e9f7e1d7a8b1',
    head_ref: '',
    base_ref: '',
    event_name: 'push',
    ref_protected: 'false',
    ref_type: 'branch',
    iss: issuer,
    // GitHub's: valid from 5 minutes before issue, for 6 hours.
    nbf: iat - 300,
    exp: iat + 6 * 3600,
    iat,
  };
  const head = b64({ typ: 'JWT', alg: 'RS256', x5t: KID, kid: KID });
  const input = `${head}.${b64(claims)}`;
  const signature = crypto.sign('sha256', Buffer.from(input), forge ? forger : privateKey).toString('base64url');
  return `${input}.${signature}`;
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  const url = new URL(req.url, issuer);
  if (req.method !== 'GET') return send(res, 405, { message: 'method not allowed' });
  if (url.pathname === '/.well-known/openid-configuration') {
    // The fields GitHub's discovery document has (no authorization or token endpoint).
    return send(res, 200, {
      issuer,
      jwks_uri: `${issuer}/.well-known/jwks`,
      subject_types_supported: ['public', 'pairwise'],
      response_types_supported: ['id_token'],
      claims_supported: ['sub', 'aud', 'exp', 'iat', 'iss', 'jti', 'nbf', 'ref', 'sha', 'repository',
        'repository_id', 'repository_owner', 'repository_owner_id', 'repository_visibility', 'run_id',
        'run_number', 'run_attempt', 'runner_environment', 'actor', 'actor_id', 'workflow',
        'workflow_ref', 'workflow_sha', 'head_ref', 'base_ref', 'event_name', 'ref_type',
        'ref_protected', 'job_workflow_ref', 'job_workflow_sha'],
      id_token_signing_alg_values_supported: ['RS256'],
      scopes_supported: ['openid'],
    });
  }
  if (url.pathname === '/.well-known/jwks') {
    return send(res, 200, { keys: [{ kty: 'RSA', alg: 'RS256', use: 'sig', kid: KID, x5t: KID, n: jwk.n, e: jwk.e }] });
  }
  if (url.pathname === REQUEST_PATH) {
    const audience = url.searchParams.get('audience') ?? undefined;
    const authorized = req.headers.authorization === `Bearer ${REQUEST_TOKEN}`;
    const entry = { audience: audience ?? null, authorized, apiVersion: url.searchParams.get('api-version') };
    requests.push(entry);
    if (!authorized) {
      entry.status = 401;
      return send(res, 401, { message: 'unauthorized' });
    }
    entry.status = 200;
    entry.token = idToken(audience);
    return send(res, 200, { value: entry.token });
  }
  return send(res, 404, { message: 'not found' });
});

const hooks = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname === '/__test/requests') return send(res, 200, requests);
  if (url.pathname === '/__test/ref' && url.searchParams.get('value')) {
    REF = url.searchParams.get('value');
    return send(res, 200, { ref: REF });
  }
  if (url.pathname === '/__test/forge') {
    forge = url.searchParams.get('value') === '1';
    return send(res, 200, { forge });
  }
  return send(res, 404, { message: 'not found' });
});

await new Promise((resolve) => hooks.listen(0, '127.0.0.1', resolve));
server.listen(PORT, '127.0.0.1', () => {
  const port = server.address().port;
  issuer = `https://127.0.0.1:${port}`;
  process.stdout.write(`${JSON.stringify({
    issuer,
    port,
    hooks_port: hooks.address().port,
    request_url: `${issuer}${REQUEST_PATH}?api-version=2.0`,
    request_token: REQUEST_TOKEN,
  })}\n`);
});

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
