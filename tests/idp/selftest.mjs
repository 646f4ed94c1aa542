// Self-test of the test IdP: node --test tests/idp/selftest.mjs
// Starts server.mjs as a child process (short TTLs, device interval 1s) and checks the
// Keycloak-shaped behaviour the Rust tests rely on.

import { strict as assert } from 'node:assert';
import { spawn, execFile } from 'node:child_process';
import * as crypto from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const SERVER = `${HERE}server.mjs`;
const APPROVE = `${HERE}approve.mjs`;
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const SA_USER = 'test-sa@sa.cloud.pola.rs';
const SA_SECRET = 'test-sa-secret';

async function startServer(env = {}) {
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { stderr += d; });
  child.stdout.setEncoding('utf8');
  let stdout = '';
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 15_000);
    child.stdout.on('data', (d) => {
      stdout += d;
      const nl = stdout.indexOf('\n');
      if (nl !== -1) {
        clearTimeout(timer);
        resolve(stdout.slice(0, nl));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${stderr}`));
    });
  });
  const info = JSON.parse(ready);
  const origin = `http://127.0.0.1:${info.port}`;
  return {
    ...info,
    origin,
    child,
    get stderr() { return stderr; },
    get stdout() { return stdout; },
    url: (path) => `${info.issuer}${path}`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.stdin.end();
      await exited;
    },
  };
}

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function decodeJwt(token) {
  const [h, p, s] = token.split('.');
  assert.ok(h && p && s, `not a JWT: ${token}`);
  return { header: b64json(h), payload: b64json(p), signingInput: `${h}.${p}`, signature: Buffer.from(s, 'base64url') };
}

async function verifyJwt(srv, token) {
  const jwt = decodeJwt(token);
  const jwks = await (await fetch(srv.url('/protocol/openid-connect/certs'))).json();
  const jwk = jwks.keys.find((k) => k.kid === jwt.header.kid);
  assert.ok(jwk, 'signing key is published at the certs endpoint');
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  assert.ok(crypto.verify('RSA-SHA256', Buffer.from(jwt.signingInput), key, jwt.signature), 'JWT signature verifies');
  return jwt;
}

async function post(srv, path, form, { basic, signal, redirect } = {}) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (basic) headers.authorization = `Basic ${Buffer.from(`${basic[0]}:${basic[1]}`).toString('base64')}`;
  const res = await fetch(srv.url(path), {
    method: 'POST', headers, body: new URLSearchParams(form).toString(), signal, redirect: redirect ?? 'follow',
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

const token = (srv, form, opts) => post(srv, '/protocol/openid-connect/token', form, opts);

function passwordGrant(srv, { username = SA_USER, password = SA_SECRET, ...extra } = {}) {
  return token(srv, { grant_type: 'password', client_id: 'PolarsCloud', username, password, ...extra });
}

async function hook(srv, method, path, body) {
  const res = await fetch(`${srv.origin}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.equal(res.status, 200, `${method} ${path}`);
  return res.json();
}

function runApprove(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [APPROVE, ...args], { timeout: 20_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

const TTL = 120;
const RTTL = 900;

describe('test IdP', () => {
  let srv;
  before(async () => {
    srv = await startServer({
      IDP_TOKEN_TTL: String(TTL),
      IDP_REFRESH_TTL: String(RTTL),
      IDP_DEVICE_TTL: '60',
      IDP_DEVICE_INTERVAL: '1',
      IDP_SERVICE_ACCOUNTS: 'test-sa:test-sa-secret,other-sa:other-secret',
    });
  });
  after(async () => { await srv?.stop(); });

  it('prints one ready line with the Keycloak issuer', () => {
    assert.match(srv.issuer, /^http:\/\/127\.0\.0\.1:\d+\/realms\/Polars$/);
    assert.equal(srv.issuer, `http://127.0.0.1:${srv.port}/realms/Polars`);
    assert.equal(srv.stdout.trim().split('\n').length, 1);
  });

  it('serves discovery with Keycloak URLs', async () => {
    const res = await fetch(`${srv.issuer}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    const d = await res.json();
    const oc = `${srv.issuer}/protocol/openid-connect`;
    assert.equal(d.issuer, srv.issuer);
    assert.equal(d.token_endpoint, `${oc}/token`);
    assert.equal(d.device_authorization_endpoint, `${oc}/auth/device`);
    assert.equal(d.revocation_endpoint, `${oc}/revoke`);
    assert.equal(d.introspection_endpoint, `${oc}/token/introspect`);
    assert.equal(d.jwks_uri, `${oc}/certs`);
    assert.equal(d.userinfo_endpoint, `${oc}/userinfo`);
    assert.equal(d.authorization_endpoint, `${oc}/auth`);
    assert.equal(d.end_session_endpoint, `${oc}/logout`);
    for (const g of ['password', 'refresh_token', 'client_credentials', DEVICE_GRANT, 'authorization_code']) {
      assert.ok(d.grant_types_supported.includes(g), g);
    }
    const jwks = await (await fetch(d.jwks_uri)).json();
    assert.equal(jwks.keys.length, 1);
    assert.equal(jwks.keys[0].kty, 'RSA');
    assert.equal(jwks.keys[0].d, undefined, 'no private parts published');
  });

  it('answers 404 outside the realm', async () => {
    const res = await fetch(`${srv.origin}/.well-known/openid-configuration`);
    assert.equal(res.status, 404);
  });

  describe('password grant', () => {
    it('issues a Keycloak-shaped response with a JWT access token', async () => {
      const res = await passwordGrant(srv);
      assert.equal(res.status, 200, res.text);
      const b = res.json;
      assert.deepEqual(Object.keys(b), [
        'access_token', 'expires_in', 'refresh_expires_in', 'refresh_token', 'token_type',
        'not-before-policy', 'session_state', 'scope',
      ]);
      assert.equal(b.expires_in, TTL);
      assert.equal(b.refresh_expires_in, RTTL);
      assert.equal(b.token_type, 'Bearer');
      assert.equal(b['not-before-policy'], 0);
      assert.match(b.session_state, /^[0-9a-f-]{36}$/);
      assert.equal(b.scope, 'profile email');
      assert.ok(b.refresh_token.length > 20);
      assert.equal(res.headers.get('cache-control'), 'no-store');

      const { header, payload } = await verifyJwt(srv, b.access_token);
      assert.equal(header.alg, 'RS256');
      assert.equal(payload.exp, payload.iat + TTL);
      assert.ok(Math.abs(payload.iat - Date.now() / 1000) < 30);
      assert.equal(payload.iss, srv.issuer);
      assert.equal(payload.azp, 'PolarsCloud');
      assert.equal(payload.client_id, 'PolarsCloud');
      assert.equal(payload.aud, 'account');
      assert.equal(payload.preferred_username, SA_USER);
      assert.match(payload.sub, /^[0-9a-f-]{36}$/);
      assert.equal(payload.sid, b.session_state);

      const again = await passwordGrant(srv, { username: SA_USER.toUpperCase() });
      assert.equal(again.status, 200);
      assert.equal(decodeJwt(again.json.access_token).payload.sub, payload.sub, 'stable subject');
    });

    it('adds an id_token when openid is asked for', async () => {
      const res = await passwordGrant(srv, { scope: 'openid' });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.json.scope, 'openid profile email');
      const id = decodeJwt(res.json.id_token).payload;
      assert.equal(id.aud, 'PolarsCloud');
      assert.equal(id.preferred_username, SA_USER);
    });

    for (const [name, creds] of [
      ['a wrong secret', { password: 'nope' }],
      ['an unknown user', { username: 'nobody@sa.cloud.pola.rs' }],
      ['a username without the service-account suffix', { username: 'test-sa' }],
      ['another service account\'s secret', { password: 'other-secret' }],
    ]) {
      it(`refuses ${name} like Keycloak (401 invalid_grant)`, async () => {
        const res = await passwordGrant(srv, creds);
        assert.equal(res.status, 401);
        assert.equal(res.text, '{"error":"invalid_grant","error_description":"Invalid user credentials"}');
      });
    }

    it('works for a second configured service account', async () => {
      const res = await passwordGrant(srv, { username: 'other-sa@sa.cloud.pola.rs', password: 'other-secret' });
      assert.equal(res.status, 200, res.text);
    });

    it('refuses the password grant to the client-credentials clients', async () => {
      const res = await token(srv, {
        grant_type: 'password', username: SA_USER, password: SA_SECRET,
      }, { basic: ['cc-basic', 'cc-basic-secret'] });
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'invalid_request');
    });

    it('accepts PolarsCloud sent as HTTP Basic with an empty secret (as Keycloak does)', async () => {
      const res = await token(srv, {
        grant_type: 'password', username: SA_USER, password: SA_SECRET,
      }, { basic: ['PolarsCloud', ''] });
      assert.equal(res.status, 200, res.text);
    });

    it('rotates a service-account secret through the hook', async () => {
      await hook(srv, 'POST', '/__test/service-accounts', { id: 'rotating-sa', secret: 'one' });
      const user = 'rotating-sa@sa.cloud.pola.rs';
      assert.equal((await passwordGrant(srv, { username: user, password: 'one' })).status, 200);
      await hook(srv, 'POST', '/__test/service-accounts', { id: 'rotating-sa', secret: 'two' });
      assert.equal((await passwordGrant(srv, { username: user, password: 'one' })).status, 401);
      assert.equal((await passwordGrant(srv, { username: user, password: 'two' })).status, 200);
    });
  });

  describe('refresh and revocation', () => {
    it('refreshes with the standard refresh grant (rotating the refresh token)', async () => {
      const first = (await passwordGrant(srv)).json;
      const res = await token(srv, { grant_type: 'refresh_token', client_id: 'PolarsCloud', refresh_token: first.refresh_token });
      assert.equal(res.status, 200, res.text);
      const b = res.json;
      assert.deepEqual(Object.keys(b), [
        'access_token', 'expires_in', 'refresh_expires_in', 'refresh_token', 'token_type',
        'not-before-policy', 'session_state', 'scope',
      ]);
      assert.equal(b.expires_in, TTL);
      assert.equal(b.refresh_expires_in, RTTL);
      assert.notEqual(b.refresh_token, first.refresh_token, 'refresh tokens rotate');
      assert.equal(b.session_state, first.session_state);
      assert.equal(b.scope, 'profile email');
      const before = decodeJwt(first.access_token).payload;
      const { payload } = await verifyJwt(srv, b.access_token);
      assert.equal(payload.sub, before.sub);
      assert.equal(payload.exp, payload.iat + TTL);
      assert.equal(payload.azp, 'PolarsCloud');

      // the rotated-out token is spent; using it again is refused (and kills the grant)
      const reuse = await token(srv, { grant_type: 'refresh_token', client_id: 'PolarsCloud', refresh_token: first.refresh_token });
      assert.equal(reuse.status, 400);
      assert.equal(reuse.json.error, 'invalid_grant');
      const after = await token(srv, { grant_type: 'refresh_token', client_id: 'PolarsCloud', refresh_token: b.refresh_token });
      assert.equal(after.json.error, 'invalid_grant', 'reuse detection revoked the whole grant');
    });

    it('refuses a refresh token after it was revoked', async () => {
      const first = (await passwordGrant(srv)).json;
      const rev = await post(srv, '/protocol/openid-connect/revoke', {
        client_id: 'PolarsCloud', token: first.refresh_token, token_type_hint: 'refresh_token',
      });
      assert.equal(rev.status, 200, rev.text);
      const res = await token(srv, { grant_type: 'refresh_token', client_id: 'PolarsCloud', refresh_token: first.refresh_token });
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'invalid_grant');
    });

    it('userinfo and introspection accept the JWT access token until its grant is revoked', async () => {
      const first = (await passwordGrant(srv)).json;
      const userinfo = () => fetch(srv.url('/protocol/openid-connect/userinfo'), {
        headers: { authorization: `Bearer ${first.access_token}` },
      });
      const introspect = () => post(srv, '/protocol/openid-connect/token/introspect', { token: first.access_token }, { basic: ['cc-basic', 'cc-basic-secret'] });
      const ui = await userinfo();
      assert.equal(ui.status, 200);
      assert.equal((await ui.json()).preferred_username, SA_USER);
      const active = await introspect();
      assert.equal(active.status, 200, active.text);
      assert.equal(active.json.active, true);
      assert.equal(active.json.client_id, 'PolarsCloud');
      assert.equal(active.json.username, SA_USER);
      const anonymous = await post(srv, '/protocol/openid-connect/token/introspect', { token: first.access_token, client_id: 'PolarsCloud' });
      assert.equal(anonymous.status, 401);

      await post(srv, '/protocol/openid-connect/revoke', { client_id: 'PolarsCloud', token: first.refresh_token });
      assert.equal((await userinfo()).status, 401);
      assert.deepEqual((await introspect()).json, { active: false });
    });

    it('refuses an unknown refresh token', async () => {
      const res = await token(srv, { grant_type: 'refresh_token', client_id: 'PolarsCloud', refresh_token: 'bogus' });
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'invalid_grant');
    });
  });

  describe('client credentials', () => {
    it('cc-basic gets a JWT with client_secret_basic, scope and audience accepted', async () => {
      const res = await token(srv, { grant_type: 'client_credentials', scope: 'openid profile whatever', audience: 'something' }, { basic: ['cc-basic', 'cc-basic-secret'] });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.json.token_type, 'Bearer');
      assert.equal(res.json.expires_in, TTL);
      assert.equal(res.json.refresh_token, undefined);
      const { payload } = await verifyJwt(srv, res.json.access_token);
      assert.equal(payload.client_id, 'cc-basic');
      assert.equal(payload.azp, 'cc-basic');
      assert.equal(payload.sub, 'cc-basic');
      assert.equal(payload.exp, payload.iat + TTL);
      assert.equal(payload.iss, srv.issuer);
    });

    it('cc-post gets a JWT with client_secret_post', async () => {
      const res = await token(srv, { grant_type: 'client_credentials', client_id: 'cc-post', client_secret: 'cc-post-secret' });
      assert.equal(res.status, 200, res.text);
      const { payload } = await verifyJwt(srv, res.json.access_token);
      assert.equal(payload.client_id, 'cc-post');
      assert.equal(payload.exp, payload.iat + TTL);
    });

    it('refuses a wrong secret', async () => {
      const wrong = await token(srv, { grant_type: 'client_credentials', client_id: 'cc-post', client_secret: 'x' });
      assert.equal(wrong.status, 401);
      assert.equal(wrong.json.error, 'invalid_client');
      const basic = await token(srv, { grant_type: 'client_credentials' }, { basic: ['cc-basic', 'x'] });
      assert.equal(basic.status, 401);
      assert.equal(basic.json.error, 'invalid_client');
    });

    it('like Keycloak, takes either secret method from either client (check the request log)', async () => {
      const viaBasic = await token(srv, { grant_type: 'client_credentials' }, { basic: ['cc-post', 'cc-post-secret'] });
      assert.equal(viaBasic.status, 200, viaBasic.text);
      const viaPost = await token(srv, { grant_type: 'client_credentials', client_id: 'cc-basic', client_secret: 'cc-basic-secret' });
      assert.equal(viaPost.status, 200, viaPost.text);
    });

    it('refuses the client_credentials grant to PolarsCloud', async () => {
      const res = await token(srv, { grant_type: 'client_credentials', client_id: 'PolarsCloud' });
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'invalid_request');
    });
  });

  describe('faults and request log', () => {
    const ok = () => token(srv, { grant_type: 'client_credentials', client_id: 'cc-post', client_secret: 'cc-post-secret' });

    it('status fault', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'status', status: 503, body: 'down for maintenance', content_type: 'text/plain', retry_after: '2' }] });
      const res = await ok();
      assert.equal(res.status, 503);
      assert.equal(res.text, 'down for maintenance');
      assert.equal(res.headers.get('retry-after'), '2');
      assert.match(res.headers.get('content-type'), /^text\/plain/);
      assert.equal((await ok()).status, 200, 'a fault is used once');
    });

    it('status fault with extra headers (a redirect)', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'status', status: 302, headers: { Location: 'https://elsewhere.invalid/login' } }] });
      const res = await token(srv, { grant_type: 'client_credentials', client_id: 'cc-post', client_secret: 'cc-post-secret' }, { redirect: 'manual' });
      assert.equal(res.status, 302);
      assert.equal(res.headers.get('location'), 'https://elsewhere.invalid/login');
    });

    it('echo fault quotes the raw body and the Authorization header', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'echo' }, { kind: 'echo', status: 400, error: 'invalid_client' }] });
      const res = await token(srv, { grant_type: 'client_credentials', client_id: 'cc-post', client_secret: 'a+b c/d' });
      assert.equal(res.status, 401);
      assert.equal(res.json.error, 'invalid_grant');
      assert.match(res.json.error_description, /client_secret=a%2Bb(\+|%20)c%2Fd/);
      const basic = await token(srv, { grant_type: 'client_credentials' }, { basic: ['cc-basic', 'x'] });
      assert.equal(basic.status, 400);
      assert.match(basic.json.error_description, /authorization: Basic [A-Za-z0-9+/=]+/);
    });

    it('oauth_error fault', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'oauth_error', status: 401, error: 'invalid_client' }] });
      const res = await ok();
      assert.equal(res.status, 401);
      assert.deepEqual(res.json, { error: 'invalid_client' });
    });

    it('garbage fault', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'garbage' }] });
      const res = await ok();
      assert.equal(res.status, 200);
      assert.equal(res.json, undefined);
      assert.ok(res.text.length > 0);
    });

    it('no_access_token fault', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'no_access_token' }] });
      const res = await ok();
      assert.equal(res.status, 200);
      assert.deepEqual(res.json, { token_type: 'Bearer' });
    });

    it('reset fault', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'reset' }] });
      await assert.rejects(ok(), TypeError);
      assert.equal((await ok()).status, 200);
    });

    it('hang fault', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'hang', ms: 10_000 }] });
      const started = Date.now();
      await assert.rejects(
        token(srv, { grant_type: 'client_credentials', client_id: 'cc-post', client_secret: 'cc-post-secret' }, { signal: AbortSignal.timeout(300) }),
        (err) => err.name === 'TimeoutError' || err.name === 'AbortError',
      );
      assert.ok(Date.now() - started < 5000);
      assert.equal((await ok()).status, 200);
    });

    it('hang fault that closes the connection when its time is up', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'hang', ms: 200 }] });
      const started = Date.now();
      await assert.rejects(ok(), TypeError);
      assert.ok(Date.now() - started >= 190);
    });

    it('hang fault that answers normally when its time is up (then: answer)', async () => {
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'hang', ms: 200, then: 'answer' }] });
      const started = Date.now();
      const res = await ok();
      assert.equal(res.status, 200, res.text);
      assert.ok(Date.now() - started >= 190);
    });

    it('faults are FIFO and filtered by grant_type; DELETE clears them', async () => {
      await hook(srv, 'POST', '/__test/faults', {
        faults: [
          { kind: 'status', status: 502, grant_type: 'password' },
          { kind: 'status', status: 500 },
          { kind: 'status', status: 504 },
        ],
      });
      assert.equal((await ok()).status, 500, 'password-only fault skipped for client_credentials');
      assert.equal((await passwordGrant(srv)).status, 502);
      assert.equal((await passwordGrant(srv)).status, 504);
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'status', status: 500 }] });
      assert.equal((await hook(srv, 'GET', '/__test/faults')).length, 1);
      await hook(srv, 'DELETE', '/__test/faults');
      assert.equal((await ok()).status, 200);
    });

    it('a fault can target the revocation endpoint; the log shows faults', async () => {
      await hook(srv, 'DELETE', '/__test/requests');
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'status', status: 500, endpoint: 'revocation' }] });
      assert.equal((await ok()).status, 200, 'token endpoint untouched');
      const rev = await post(srv, '/protocol/openid-connect/revoke', { client_id: 'PolarsCloud', token: 'x' });
      assert.equal(rev.status, 500);
      await hook(srv, 'POST', '/__test/faults', { faults: [{ kind: 'reset' }] });
      await assert.rejects(ok(), TypeError);
      await sleep(50);
      const log = await hook(srv, 'GET', '/__test/requests');
      assert.deepEqual(log.map((e) => [e.endpoint, e.status, e.fault]), [
        ['token', 200, null], ['revocation', 500, 'status'], ['token', 'no-response', 'reset'],
      ]);
    });

    it('rejects unknown fault kinds', async () => {
      const res = await fetch(`${srv.origin}/__test/faults`, { method: 'POST', body: JSON.stringify({ faults: [{ kind: 'nope' }] }) });
      assert.equal(res.status, 400);
    });

    it('records token and revocation requests', async () => {
      await hook(srv, 'DELETE', '/__test/requests');
      await token(srv, { grant_type: 'client_credentials', scope: 'a' }, { basic: ['cc-basic', 'cc-basic-secret'] });
      await passwordGrant(srv);
      await post(srv, '/protocol/openid-connect/revoke', { client_id: 'PolarsCloud', token: 'whatever' });
      const log = await hook(srv, 'GET', '/__test/requests');
      assert.equal(log.length, 3);
      assert.equal(log[0].path, '/realms/Polars/protocol/openid-connect/token');
      assert.equal(log[0].endpoint, 'token');
      assert.equal(log[0].method, 'POST');
      assert.equal(log[0].basic, true);
      assert.equal(log[0].basic_client_id, 'cc-basic');
      assert.deepEqual(log[0].params, { grant_type: 'client_credentials', scope: 'a' });
      assert.equal(log[0].status, 200);
      assert.ok(!Number.isNaN(Date.parse(log[0].time)));
      assert.equal(log[1].basic, false);
      assert.equal(log[1].basic_client_id, null);
      assert.equal(log[1].params.username, SA_USER);
      assert.equal(log[1].params.grant_type, 'password');
      assert.equal(log[2].endpoint, 'revocation');
      assert.equal(log[2].path, '/realms/Polars/protocol/openid-connect/revoke');
      await hook(srv, 'DELETE', '/__test/requests');
      assert.deepEqual(await hook(srv, 'GET', '/__test/requests'), []);
    });
  });

  describe('device flow', () => {
    const startDevice = async () => {
      const res = await post(srv, '/protocol/openid-connect/auth/device', { client_id: 'PolarsCloud', audience: 'account' });
      assert.equal(res.status, 200, res.text);
      return res.json;
    };
    const poll = (deviceCode) => token(srv, { grant_type: DEVICE_GRANT, client_id: 'PolarsCloud', device_code: deviceCode });

    it('answers the device authorization request like Keycloak', async () => {
      const d = await startDevice();
      assert.equal(d.verification_uri, `${srv.issuer}/device`);
      assert.equal(d.verification_uri_complete, `${srv.issuer}/device?user_code=${d.user_code}`);
      assert.match(d.user_code, /^[A-Z]{4}-[A-Z]{4}$/);
      assert.equal(d.expires_in, 60);
      assert.equal(d.interval, 1);
    });

    it('pending, slow_down when polled too fast, approve via approve.mjs, then tokens', async () => {
      const d = await startDevice();
      const first = await poll(d.device_code);
      assert.equal(first.status, 400);
      assert.equal(first.json.error, 'authorization_pending');
      const fast = await poll(d.device_code);
      assert.equal(fast.status, 400);
      assert.deepEqual(fast.json, { error: 'slow_down', error_description: 'Slow down' });

      const approved = await runApprove([d.verification_uri_complete, '--login', 'bob']);
      assert.equal(approved.code, 0, approved.stderr);
      assert.match(approved.stderr, /approved as bob/);

      await sleep(1000);
      const res = await poll(d.device_code);
      assert.equal(res.status, 200, res.text);
      assert.ok(res.json.refresh_token);
      assert.equal(res.json.expires_in, TTL);
      assert.equal(res.json.refresh_expires_in, RTTL);
      assert.equal(res.json['not-before-policy'], 0);
      const { payload } = await verifyJwt(srv, res.json.access_token);
      assert.equal(payload.sub, 'bob');
      assert.equal(payload.azp, 'PolarsCloud');
      assert.equal(payload.exp, payload.iat + TTL);

      const refreshed = await token(srv, { grant_type: 'refresh_token', client_id: 'PolarsCloud', refresh_token: res.json.refresh_token });
      assert.equal(refreshed.status, 200, refreshed.text);
      assert.equal(decodeJwt(refreshed.json.access_token).payload.sub, 'bob');

      await sleep(1000);
      const spent = await poll(d.device_code);
      assert.equal(spent.json.error, 'invalid_grant', 'a device code gives tokens once');
    });

    it('approves with the plain verification_uri and --user-code', async () => {
      const d = await startDevice();
      const approved = await runApprove([d.verification_uri, '--user-code', d.user_code]);
      assert.equal(approved.code, 0, approved.stderr);
      const res = await poll(d.device_code);
      assert.equal(res.status, 200, res.text);
      assert.equal(decodeJwt(res.json.access_token).payload.sub, 'alice');
    });

    it('deny on the confirm page gives access_denied', async () => {
      const d = await startDevice();
      const denied = await runApprove([d.verification_uri_complete, '--deny']);
      assert.equal(denied.code, 0, denied.stderr);
      const res = await poll(d.device_code);
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'access_denied');
    });

    it('cancel on the sign-in page gives access_denied', async () => {
      const d = await startDevice();
      const denied = await runApprove([d.verification_uri_complete, '--deny-at', 'login']);
      assert.equal(denied.code, 0, denied.stderr);
      const res = await poll(d.device_code);
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'access_denied');
    });

    it('approve.mjs fails on an unknown code', async () => {
      const out = await runApprove([`${srv.issuer}/device`, '--user-code', 'BCDF-GHJK']);
      assert.equal(out.code, 1);
    });

    it('an unknown device code is invalid_grant', async () => {
      const res = await poll('no-such-code');
      assert.equal(res.status, 400);
      assert.equal(res.json.error, 'invalid_grant');
    });
  });
});

describe('test IdP with short-lived device codes', () => {
  let srv;
  before(async () => {
    srv = await startServer({ IDP_DEVICE_TTL: '1', IDP_DEVICE_INTERVAL: '1' });
  });
  after(async () => { await srv?.stop(); });

  it('an expired device code is expired_token, and cannot be approved', async () => {
    const d = (await post(srv, '/protocol/openid-connect/auth/device', { client_id: 'PolarsCloud', audience: 'account' })).json;
    assert.equal(d.expires_in, 1);
    assert.equal(d.interval, 1);
    await sleep(2100);
    const res = await token(srv, { grant_type: DEVICE_GRANT, client_id: 'PolarsCloud', device_code: d.device_code });
    assert.equal(res.status, 400);
    assert.equal(res.json.error, 'expired_token');
    const out = await runApprove([d.verification_uri_complete]);
    assert.equal(out.code, 1);
  });

  it('uses the Keycloak defaults when nothing is configured', async () => {
    const res = await passwordGrant(srv);
    assert.equal(res.json.expires_in, 300);
    assert.equal(res.json.refresh_expires_in, 1800);
  });
});

describe('test IdP lifecycle', () => {
  it('exits when stdin reaches EOF', async () => {
    const srv = await startServer();
    const exited = once(srv.child, 'exit');
    srv.child.stdin.end();
    const [code] = await exited;
    assert.equal(code, 0);
  });

  it('exits on SIGTERM', async () => {
    const srv = await startServer();
    const exited = once(srv.child, 'exit');
    srv.child.kill('SIGTERM');
    const [code, signal] = await exited;
    assert.ok(code === 0 || signal === 'SIGTERM');
  });

  it('honours IDP_PORT', async () => {
    const probe = await startServer();
    const { port } = probe;
    await probe.stop();
    const srv = await startServer({ IDP_PORT: String(port) });
    try {
      assert.equal(srv.port, port);
    } finally {
      await srv.stop();
    }
  });
});
