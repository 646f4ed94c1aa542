#!/usr/bin/env node
// Keycloak-shaped OAuth2/OIDC test identity provider built on oidc-provider.
//
// Every URL is Keycloak's: the issuer is http://127.0.0.1:PORT/realms/Polars and the
// endpoints live under /protocol/openid-connect/... relative to it. Test hooks live under
// /__test/ (outside the realm). See README.md beside this file.
//
// stdout carries exactly one line: {"issuer":"...","port":N} once the server is ready.
// Everything else goes to stderr. The process exits when stdin reaches EOF, and on
// SIGTERM/SIGINT.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as querystring from 'node:querystring';

// oidc-provider prints some notices with console.info (stdout); stdout is reserved for the
// ready line, so route every console method to stderr before loading it.
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;
console.warn = toStderr;

// Generating the RSA signing key takes a while; let it run on the thread pool while
// oidc-provider loads.
const keyPairPromise = new Promise((resolve, reject) => {
  crypto.generateKeyPair('rsa', { modulusLength: 2048 }, (err, publicKey, privateKey) => {
    if (err) reject(err);
    else resolve({ publicKey, privateKey });
  });
});

const { default: Provider, errors } = await import('oidc-provider');

// ---------------------------------------------------------------------------------------
// configuration

function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    console.error(`[idp] ${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return value;
}

const PORT = intEnv('IDP_PORT', 0);
const TOKEN_TTL = intEnv('IDP_TOKEN_TTL', 300);
const REFRESH_TTL = intEnv('IDP_REFRESH_TTL', 1800);
// Keycloak's SSO Session Max: no refresh token outlives the session's start by more.
const SESSION_MAX = intEnv('IDP_SESSION_MAX', 36000);
const DEVICE_TTL = intEnv('IDP_DEVICE_TTL', 600);
const DEVICE_INTERVAL = intEnv('IDP_DEVICE_INTERVAL', 5);
const ROTATE_REFRESH = process.env.IDP_ROTATE_REFRESH !== '0';
const VERBOSE = process.env.IDP_VERBOSE === '1';
const IGNORE_STDIN = process.env.IDP_IGNORE_STDIN === '1';

const REALM = 'Polars';
const PREFIX = `/realms/${REALM}`;
const SA_SUFFIX = '@sa.cloud.pola.rs';
// Every access token is issued for this resource, so every access token is a JWT.
const RESOURCE = 'urn:polars-cloud:api';
const AUDIENCE = 'account';
const RESOURCE_SCOPE = 'openid profile email offline_access';
const PUBLIC_CLIENT = 'PolarsCloud';

const ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  device_authorization: '/protocol/openid-connect/auth/device',
  code_verification: '/device',
  token: '/protocol/openid-connect/token',
  revocation: '/protocol/openid-connect/revoke',
  introspection: '/protocol/openid-connect/token/introspect',
  jwks: '/protocol/openid-connect/certs',
  userinfo: '/protocol/openid-connect/userinfo',
  end_session: '/protocol/openid-connect/logout',
  pushed_authorization_request: '/protocol/openid-connect/ext/par/request',
};

function log(...args) {
  console.error('[idp]', ...args);
}

// ---------------------------------------------------------------------------------------
// service accounts (the users of the password grant)

const serviceAccounts = new Map(); // lower-cased id -> { id, secret }

function setServiceAccount(id, secret) {
  serviceAccounts.set(String(id).toLowerCase(), { id: String(id), secret: String(secret) });
}

for (const entry of (process.env.IDP_SERVICE_ACCOUNTS ?? 'test-sa:test-sa-secret').split(',')) {
  const trimmed = entry.trim();
  if (!trimmed) continue;
  const colon = trimmed.indexOf(':');
  if (colon <= 0) {
    log(`ignoring malformed IDP_SERVICE_ACCOUNTS entry ${JSON.stringify(trimmed)} (want id:secret)`);
    continue;
  }
  setServiceAccount(trimmed.slice(0, colon), trimmed.slice(colon + 1));
}

// Keycloak subjects are UUIDs; derive a stable one from the username.
function subjectFor(username) {
  const h = crypto.createHash('sha1').update(`polars-cloud-test-idp:${username}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

const usernames = new Map(); // accountId -> username (service accounts and device-flow logins)

function accountFor(accountId) {
  const username = usernames.get(accountId) ?? accountId;
  return {
    accountId,
    async claims() {
      return {
        sub: accountId,
        preferred_username: username,
        email: username.includes('@') ? username : `${username}@example.com`,
        email_verified: true,
      };
    },
  };
}

// ---------------------------------------------------------------------------------------
// storage: like oidc-provider's memory adapter, but without LRU eviction and keeping entries
// for a while past their expiry, so expired device codes answer `expired_token` (the
// built-in adapter forgets them and then answers `invalid_grant`).

const EXPIRED_GRACE_MS = 3600 * 1000;
const store = new Map(); // key -> { payload, until }
const grantMembers = new Map(); // grantId -> Set(key)
const userCodeIndex = new Map(); // userCode -> id
const sessionUidIndex = new Map(); // uid -> id

class TestAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const until = typeof expiresIn === 'number'
      ? Date.now() + expiresIn * 1000 + EXPIRED_GRACE_MS
      : Infinity;
    store.set(key, { payload, until });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (payload.userCode) userCodeIndex.set(payload.userCode, id);
    if (this.model === 'Session' && payload.uid) sessionUidIndex.set(payload.uid, id);
  }

  async find(id) {
    if (id === undefined || id === null) return undefined;
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.until < Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUserCode(userCode) {
    return this.find(userCodeIndex.get(userCode));
  }

  async findByUid(uid) {
    return this.find(sessionUidIndex.get(uid));
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) if (entry.until < now) store.delete(key);
}, 60_000).unref();

// JWT access tokens are not stored by oidc-provider; remember which grant each belongs to so
// userinfo/introspection can call a token of a revoked grant inactive (as Keycloak does).
const jwtGrants = new Map(); // jti -> { grantId, exp }
setInterval(() => {
  const now = Date.now() / 1000;
  for (const [jti, { exp }] of jwtGrants) if (exp < now) jwtGrants.delete(jti);
}, 60_000).unref();

// ---------------------------------------------------------------------------------------
// test hooks state

const faults = []; // FIFO
const requestLog = [];
const deviceNextPoll = new Map(); // device_code -> earliest ms timestamp of the next allowed poll
// Polls that arrive up to this long before the interval has fully elapsed still count as on
// time (timers and schedulers jitter); a poll straight after another is always too fast.
const POLL_TOLERANCE_MS = Math.min(250, DEVICE_INTERVAL * 100);

const FAULT_KINDS = new Set(['status', 'reset', 'hang', 'garbage', 'no_access_token', 'oauth_error', 'echo']);

function takeFault(endpoint, grantType) {
  const index = faults.findIndex((fault) => (fault.endpoint ?? 'token') === endpoint
    && (fault.grant_type === undefined || fault.grant_type === grantType));
  if (index === -1) return undefined;
  return faults.splice(index, 1)[0];
}

// ---------------------------------------------------------------------------------------
// the provider

// IDP_TLS_CERT / IDP_TLS_KEY (PEM files) serve over https instead, for the TLS tests.
const TLS = process.env.IDP_TLS_CERT && process.env.IDP_TLS_KEY
  ? { cert: fs.readFileSync(process.env.IDP_TLS_CERT), key: fs.readFileSync(process.env.IDP_TLS_KEY) }
  : null;
// IDP_HOST: the address to listen on and to name in the issuer (default loopback); the
// real node's pods reach the IdP on the node's bridge address.
const HOST = process.env.IDP_HOST || '127.0.0.1';
const server = TLS ? https.createServer(TLS) : http.createServer();
server.keepAliveTimeout = 5000;

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, HOST, () => {
    server.off('error', reject);
    resolve();
  });
});

const port = server.address().port;
const origin = `${TLS ? 'https' : 'http'}://${HOST}:${port}`;
const issuer = `${origin}${PREFIX}`;

const { privateKey, publicKey } = await keyPairPromise;
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

function resourceServerInfo() {
  return {
    scope: RESOURCE_SCOPE,
    audience: AUDIENCE,
    accessTokenTTL: TOKEN_TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
}

// `private_key_jwt`: the public halves of the test keys in tests/data/assertion, with the
// kids the Keycloak realm registers too (test-rsa, test-ec). ec-sec1.pem is another P-256
// key that no client knows, for the wrong-key case.
const ASSERTION_KEYS = new URL('../data/assertion/', import.meta.url);
const PKJWT_CLIENT = 'cc-pkjwt';
const pkjwtKeys = [['rsa.pem', 'test-rsa', 'RS256'], ['ec.pem', 'test-ec', 'ES256']].map(([file, kid, alg]) => ({
  ...crypto.createPublicKey(fs.readFileSync(new URL(file, ASSERTION_KEYS))).export({ format: 'jwk' }),
  kid,
  alg,
  use: 'sig',
}));

const provider = new Provider(issuer, {
  adapter: TestAdapter,
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  routes: ROUTES,
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username'],
    email: ['email', 'email_verified'],
  },
  // The device authorization request of Polars Cloud carries audience=account.
  extraParams: ['audience'],
  clients: [
    {
      client_id: PUBLIC_CLIENT,
      client_name: 'Polars Cloud',
      token_endpoint_auth_method: 'none',
      grant_types: [
        'password',
        'refresh_token',
        'urn:ietf:params:oauth:grant-type:device_code',
        'authorization_code',
      ],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback', 'http://[::1]/callback'],
    },
    {
      client_id: 'cc-basic',
      client_secret: 'cc-basic-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: 'cc-post',
      client_secret: 'cc-post-secret',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: PKJWT_CLIENT,
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: pkjwtKeys },
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  async findAccount(ctx, id) {
    return accountFor(id);
  },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource(ctx, client, oneOf) {
        if (oneOf) return Array.isArray(oneOf) ? oneOf[0] : oneOf;
        return RESOURCE;
      },
      useGrantedResource() {
        return true;
      },
      getResourceServerInfo() {
        return resourceServerInfo();
      },
    },
  },
  ttl: {
    AccessToken: TOKEN_TTL,
    ClientCredentials: TOKEN_TTL,
    IdToken: TOKEN_TTL,
    // Idle life, but never past the session's maximum (counted from the first token of
    // the rotation chain, as Keycloak counts from the session's start).
    RefreshToken: (ctx, token) => {
      const used = typeof token.totalLifetime === 'function' && token.iiat ? token.totalLifetime() : 0;
      return Math.max(1, Math.min(REFRESH_TTL, SESSION_MAX - used));
    },
    DeviceCode: DEVICE_TTL,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  // Keycloak hands out refresh tokens whether or not offline_access was asked for, and they
  // do not die with the browser session.
  issueRefreshToken(ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  expiresWithSession() {
    return false;
  },
  rotateRefreshToken() {
    return ROTATE_REFRESH;
  },
  // Consent is never asked for (like a Keycloak client without "consent required"): grant
  // whatever was requested.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    if (!grant) {
      grant = new ctx.oidc.provider.Grant({
        accountId: ctx.oidc.session.accountId,
        clientId: ctx.oidc.client.clientId,
      });
    }
    const requested = [...ctx.oidc.requestParamScopes];
    if (requested.length) grant.addOIDCScope(requested.join(' '));
    const claims = ctx.oidc.requestParamClaims ? [...ctx.oidc.requestParamClaims] : [];
    if (claims.length) grant.addOIDCClaims(claims);
    for (const [indicator, resourceServer] of Object.entries(ctx.oidc.resourceServers ?? {})) {
      const scope = resourceServer.scope || RESOURCE_SCOPE;
      grant.addResourceScope(indicator, scope);
    }
    await grant.save();
    return grant;
  },
  pkce: { required: () => false },
  formats: {
    customizers: {
      // Keycloak-ish claims on top of oidc-provider's (jti, sub, iat, exp, scope, client_id,
      // iss, aud).
      async jwt(ctx, token, jwt) {
        jwtGrants.set(jwt.payload.jti, { grantId: token.grantId, exp: jwt.payload.exp });
        jwt.payload.azp = token.clientId;
        jwt.payload.typ = 'Bearer';
        if (token.accountId) {
          jwt.payload.preferred_username = usernames.get(token.accountId) ?? token.accountId;
        } else {
          jwt.payload.preferred_username = `service-account-${token.clientId}`;
        }
        if (token.sid) {
          jwt.payload.sid = token.sid;
          jwt.payload.session_state = token.sid;
        }
      },
    },
  },
  renderError(ctx, out, error) {
    ctx.type = 'html';
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Error</h1>`
      + `<pre id="error">${esc(out.error)}</pre><pre id="error_description">`
      + `${esc(out.error_description ?? '')}</pre></body></html>`;
    if (VERBOSE) log('renderError', out, error?.message);
  },
});

provider.on('server_error', (ctx, err) => log('server_error', ctx?.method, ctx?.path, err));
if (VERBOSE) {
  provider.on('grant.error', (ctx, err) => log('grant.error', err.message, err.error_detail ?? ''));
}

// ----- password grant (Keycloak "Direct Access Grants" for Polars Cloud service accounts)

function invalidUserCredentials(ctx) {
  ctx.status = 401;
  ctx.body = { error: 'invalid_grant', error_description: 'Invalid user credentials' };
}

async function passwordGrant(ctx) {
  const { username, password, scope } = ctx.oidc.params;
  if (!username || password === undefined) {
    throw new errors.InvalidRequest('missing parameter(s) username or password');
  }
  const lower = String(username).toLowerCase();
  if (!lower.endsWith(SA_SUFFIX)) return invalidUserCredentials(ctx);
  const account = serviceAccounts.get(lower.slice(0, -SA_SUFFIX.length));
  if (!account || account.secret !== password) return invalidUserCredentials(ctx);

  const { client } = ctx.oidc;
  const canonical = `${account.id}${SA_SUFFIX}`.toLowerCase();
  const accountId = subjectFor(canonical);
  usernames.set(accountId, canonical);

  // Keycloak's default client scopes (profile, email) plus whatever known scope was asked
  // for; unknown scopes are ignored.
  const requested = new Set(String(scope ?? '').split(' '));
  const scopes = new Set(['openid', 'profile', 'email', 'offline_access']
    .filter((s) => s === 'profile' || s === 'email' || requested.has(s)));
  const scopeString = [...scopes].join(' ');
  const sessionState = crypto.randomUUID();

  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addOIDCScope(scopeString);
  grant.addResourceScope(RESOURCE, scopeString);
  const grantId = await grant.save();

  const at = new provider.AccessToken({
    accountId,
    client,
    grantId,
    gty: 'password',
    sid: sessionState,
  });
  at.resourceServer = new provider.ResourceServer(RESOURCE, resourceServerInfo());
  at.scope = scopeString;
  const accessToken = await at.save();

  const rt = new provider.RefreshToken({
    accountId,
    client,
    grantId,
    gty: 'password',
    resource: RESOURCE,
    rotations: 0,
    scope: scopeString,
    sid: sessionState,
  });
  ctx.oidc.entity('RefreshToken', rt);
  const refreshToken = await rt.save();

  let idToken;
  if (scopes.has('openid')) {
    const claims = await accountFor(accountId).claims();
    const token = new provider.IdToken({ ...claims }, { ctx });
    token.scope = scopeString;
    token.set('sid', sessionState);
    idToken = await token.issue({ use: 'idtoken' });
  }

  ctx.body = {
    access_token: accessToken,
    expires_in: at.expiration,
    refresh_expires_in: rt.expiration,
    refresh_token: refreshToken,
    token_type: 'Bearer',
    id_token: idToken,
    'not-before-policy': 0,
    session_state: sessionState,
    scope: scopeString,
  };
  if (!idToken) delete ctx.body.id_token;
}

provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope']);

// ----- Keycloak-shaped token and device authorization responses

provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'device_authorization' && ctx.status === 200 && ctx.body?.device_code) {
    ctx.body.interval = DEVICE_INTERVAL;
  }
  if (route === 'token' && ctx.status === 200 && ctx.body?.access_token
      && ctx.oidc.params?.grant_type !== 'password') {
    const body = ctx.body;
    const rt = ctx.oidc.entities.RefreshToken;
    const at = ctx.oidc.entities.AccessToken;
    const sid = rt?.sid ?? at?.sid ?? rt?.sessionUid ?? at?.sessionUid;
    const shaped = {
      access_token: body.access_token,
      expires_in: body.expires_in,
      refresh_expires_in: body.refresh_token && rt ? rt.expiration : 0,
    };
    if (body.refresh_token) shaped.refresh_token = body.refresh_token;
    shaped.token_type = body.token_type;
    if (body.id_token) shaped.id_token = body.id_token;
    shaped['not-before-policy'] = 0;
    if (sid) shaped.session_state = sid;
    for (const [k, v] of Object.entries(body)) if (!(k in shaped)) shaped[k] = v;
    ctx.body = shaped;
  }
});

const providerCallback = provider.callback();

// ---------------------------------------------------------------------------------------
// HTTP front: test hooks, request recording, faults, slow_down, then the provider

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function parseBasic(header) {
  if (!header || !/^basic /i.test(header)) return undefined;
  try {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const rawId = colon === -1 ? decoded : decoded.slice(0, colon);
    const rawSecret = colon === -1 ? '' : decoded.slice(colon + 1);
    const dec = (s) => {
      try { return decodeURIComponent(s.replace(/\+/g, '%20')); } catch { return s; }
    };
    return { clientId: dec(rawId), secret: dec(rawSecret) };
  } catch {
    return { clientId: undefined, secret: undefined };
  }
}

async function handleTestHook(req, res, url) {
  const path = url.pathname.replace(/\/+$/, '');
  let body;
  if (req.method === 'POST' || req.method === 'PUT') {
    const raw = (await readBody(req)).toString('utf8');
    try {
      body = raw ? JSON.parse(raw) : {};
    } catch {
      return sendJson(res, 400, { error: 'body must be JSON' });
    }
  }
  switch (`${req.method} ${path}`) {
    case 'POST /__test/faults': {
      const list = Array.isArray(body) ? body : body.faults;
      if (!Array.isArray(list)) return sendJson(res, 400, { error: 'want {"faults":[...]}' });
      for (const fault of list) {
        if (!fault || !FAULT_KINDS.has(fault.kind)) {
          return sendJson(res, 400, { error: `unknown fault kind ${JSON.stringify(fault?.kind)}` });
        }
      }
      faults.push(...list);
      return sendJson(res, 200, { queued: faults.length });
    }
    case 'GET /__test/faults':
      return sendJson(res, 200, faults);
    case 'DELETE /__test/faults':
      faults.length = 0;
      return sendJson(res, 200, { queued: 0 });
    case 'GET /__test/requests':
      return sendJson(res, 200, requestLog);
    case 'DELETE /__test/requests':
      requestLog.length = 0;
      return sendJson(res, 200, { cleared: true });
    case 'POST /__test/service-accounts': {
      if (typeof body?.id !== 'string' || typeof body?.secret !== 'string' || !body.id) {
        return sendJson(res, 400, { error: 'want {"id":"...","secret":"..."}' });
      }
      setServiceAccount(body.id, body.secret);
      return sendJson(res, 200, { id: body.id, username: `${body.id}${SA_SUFFIX}` });
    }
    case 'GET /__test/service-accounts':
      return sendJson(res, 200, [...serviceAccounts.values()].map(({ id }) => ({ id, username: `${id}${SA_SUFFIX}` })));
    case 'GET /__test/health':
      return sendJson(res, 200, { issuer, port });
    default:
      return sendJson(res, 404, { error: 'no such test hook' });
  }
}

const GARBAGE = '<html><body>502 Bad Gateway (this is not JSON)</body></html>';

function applyFault(fault, req, res, entry, raw, proceed) {
  entry.fault = fault.kind;
  switch (fault.kind) {
    case 'status': {
      const status = fault.status ?? 503;
      let { body } = fault;
      let contentType = fault.content_type;
      if (body !== undefined && typeof body !== 'string') {
        body = JSON.stringify(body);
        contentType ??= 'application/json';
      }
      body ??= '';
      const headers = { 'content-type': contentType ?? 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) };
      if (fault.retry_after !== undefined) headers['retry-after'] = String(fault.retry_after);
      for (const [name, value] of Object.entries(fault.headers ?? {})) headers[name.toLowerCase()] = String(value);
      res.writeHead(status, headers);
      res.end(body);
      return;
    }
    case 'echo': {
      // A careless IdP that quotes the request back: the raw body as sent on the wire
      // (form-encoded) and the Authorization header, in error_description.
      const description = `request body: ${raw.toString('utf8')}; authorization: ${req.headers.authorization ?? ''}`;
      sendJson(res, fault.status ?? 401, { error: fault.error ?? 'invalid_grant', error_description: description });
      return;
    }
    case 'oauth_error': {
      const out = { error: fault.error ?? 'invalid_request' };
      if (fault.error_description !== undefined) out.error_description = fault.error_description;
      const headers = {};
      if (fault.retry_after !== undefined) headers['retry-after'] = String(fault.retry_after);
      sendJson(res, fault.status ?? 400, out, headers);
      return;
    }
    case 'garbage': {
      const body = fault.body ?? GARBAGE;
      res.writeHead(fault.status ?? 200, {
        'content-type': fault.content_type ?? 'text/html; charset=utf-8',
        'content-length': Buffer.byteLength(body),
      });
      res.end(body);
      return;
    }
    case 'no_access_token':
      sendJson(res, 200, { token_type: 'Bearer' });
      return;
    case 'reset': {
      const { socket } = req;
      if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy();
      else socket.destroy();
      return;
    }
    case 'hang': {
      const ms = fault.ms ?? 10_000;
      const timer = setTimeout(() => {
        if (fault.then === 'answer') {
          if (!req.socket.destroyed) {
            proceed().catch((err) => {
              log('request failed', err);
              if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
            });
          }
        } else if (!req.socket.destroyed) {
          req.socket.destroy();
        }
      }, ms);
      timer.unref();
      req.socket.once('close', () => clearTimeout(timer));
      return;
    }
    default:
      sendJson(res, 500, { error: 'server_error', error_description: `bad fault ${fault.kind}` });
  }
}

function forward(req, res) {
  req.originalUrl = req.url;
  const rest = req.url.slice(PREFIX.length);
  req.url = rest.startsWith('/') ? rest : `/${rest}`;
  return providerCallback(req, res);
}

const RECORDED = new Map([[ROUTES.token, 'token'], [ROUTES.revocation, 'revocation']]);
const CLIENT_AUTH_ENDPOINTS = new Set([
  ROUTES.token, ROUTES.revocation, ROUTES.introspection, ROUTES.device_authorization,
]);
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

// oidc-provider will neither introspect JWT access tokens nor accept them at userinfo (their
// audience is the resource server); Keycloak does both, so answer those here.
const CONFIDENTIAL = new Map([['cc-basic', 'cc-basic-secret'], ['cc-post', 'cc-post-secret']]);

async function verifyAccessToken(value) {
  if (typeof value !== 'string') return undefined;
  const parts = value.split('.');
  if (parts.length !== 3) return undefined;
  let header;
  let payload;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (header.alg !== 'RS256' || header.kid !== signingKey.kid) return undefined;
  const ok = crypto.verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), publicKey,
    Buffer.from(parts[2], 'base64url'));
  if (!ok || payload.iss !== issuer || !(payload.exp > Date.now() / 1000)) return undefined;
  const known = jwtGrants.get(payload.jti);
  if (known?.grantId && !(await provider.Grant.find(known.grantId).catch(() => undefined))) {
    return undefined;
  }
  return payload;
}

function looksLikeJwt(value) {
  return typeof value === 'string' && value.split('.').length === 3;
}

async function userinfo(req, res, url) {
  let tokenValue;
  const auth = req.headers.authorization ?? '';
  if (/^bearer /i.test(auth)) tokenValue = auth.slice(7).trim();
  let raw;
  if (req.method === 'POST') {
    raw = await readBody(req);
    if (!tokenValue && /^application\/x-www-form-urlencoded/i.test(req.headers['content-type'] ?? '')) {
      tokenValue = querystring.parse(raw.toString('utf8')).access_token;
    }
  }
  if (!looksLikeJwt(tokenValue)) {
    if (raw) req.body = raw;
    return forward(req, res);
  }
  const payload = await verifyAccessToken(tokenValue);
  if (!payload) {
    return sendJson(res, 401, { error: 'invalid_token', error_description: 'Token verification failed' }, {
      'www-authenticate': 'Bearer realm="Polars", error="invalid_token", error_description="Token verification failed"',
    });
  }
  const claims = payload.sub === payload.client_id && !usernames.has(payload.sub)
    ? { sub: payload.sub, preferred_username: `service-account-${payload.client_id}`, email_verified: false }
    : await accountFor(payload.sub).claims();
  return sendJson(res, 200, claims);
}

async function introspect(req, res, params, basic) {
  const clientId = basic?.clientId ?? params.client_id;
  const secret = basic ? basic.secret : params.client_secret;
  if (!CONFIDENTIAL.has(clientId) || CONFIDENTIAL.get(clientId) !== secret) {
    return sendJson(res, 401, { error: 'invalid_client', error_description: 'Authentication failed.' });
  }
  const payload = await verifyAccessToken(params.token);
  if (!payload) return sendJson(res, 200, { active: false });
  return sendJson(res, 200, {
    ...payload,
    username: payload.preferred_username,
    token_type: 'Bearer',
    active: true,
  });
}

async function handleRealm(req, res, url) {
  const rel = url.pathname.slice(PREFIX.length) || '/';
  if (rel === ROUTES.userinfo && (req.method === 'GET' || req.method === 'POST')) {
    return userinfo(req, res, url);
  }
  if (req.method !== 'POST' || !CLIENT_AUTH_ENDPOINTS.has(rel)) return forward(req, res);

  const raw = await readBody(req);
  const isForm = /^application\/x-www-form-urlencoded/i.test(req.headers['content-type'] ?? '');
  const params = isForm ? { ...querystring.parse(raw.toString('utf8')) } : {};
  const basic = parseBasic(req.headers.authorization);
  if (rel === ROUTES.introspection && looksLikeJwt(params.token)) {
    return introspect(req, res, params, basic);
  }
  const endpoint = RECORDED.get(rel);

  let entry;
  if (endpoint) {
    entry = {
      endpoint,
      path: url.pathname,
      method: req.method,
      params: structuredClone(params),
      basic: !!basic,
      basic_client_id: basic?.clientId ?? null,
      content_type: req.headers['content-type'] ?? null,
      time: new Date().toISOString(),
      time_ms: Date.now(),
      status: null,
      fault: null,
    };
    requestLog.push(entry);
    res.on('finish', () => { entry.status = res.statusCode; });
    res.on('close', () => { entry.status ??= res.writableFinished ? res.statusCode : 'no-response'; });

    const fault = takeFault(endpoint, typeof params.grant_type === 'string' ? params.grant_type : undefined);
    if (fault) {
      if (VERBOSE) log(`fault ${fault.kind} for ${endpoint} grant_type=${params.grant_type}`);
      return applyFault(fault, req, res, entry, raw, () => proceed(req, res, rel, raw, params, basic, isForm));
    }
  }
  return proceed(req, res, rel, raw, params, basic, isForm);
}

async function proceed(req, res, rel, raw, params, basic, isForm) {

  // Keycloak always adds the client's default scopes (profile, email); oidc-provider refuses
  // to finish a device authorization that was granted no scope at all.
  if (rel === ROUTES.device_authorization && isForm) {
    const requested = typeof params.scope === 'string' ? params.scope.split(' ').filter(Boolean) : [];
    params.scope = [...new Set([...requested, 'profile', 'email'])].join(' ');
  }

  // Keycloak accepts public clients that authenticate with HTTP Basic and an empty (or any)
  // secret; oidc-provider would call that invalid_client. Move the client id into the form.
  if (basic?.clientId === PUBLIC_CLIENT && isForm) {
    delete req.headers.authorization;
    if (params.client_id === undefined) params.client_id = PUBLIC_CLIENT;
  }
  const body = isForm ? Buffer.from(querystring.stringify(params)) : raw;

  // RFC 8628 slow_down, done the way Keycloak does it: after a poll that was let through the
  // next one must wait `interval` seconds; early polls get slow_down and do not move the
  // window. Unknown or expired codes are left to oidc-provider (invalid_grant/expired_token).
  if (rel === ROUTES.token && params.grant_type === DEVICE_GRANT && typeof params.device_code === 'string') {
    const code = await provider.DeviceCode.find(params.device_code, { ignoreExpiration: true })
      .catch(() => undefined);
    if (code && !code.isExpired) {
      const now = Date.now();
      const next = deviceNextPoll.get(params.device_code);
      if (next !== undefined && now < next) {
        return sendJson(res, 400, { error: 'slow_down', error_description: 'Slow down' });
      }
      deviceNextPoll.set(params.device_code, now + DEVICE_INTERVAL * 1000 - POLL_TOLERANCE_MS);
    }
  }

  req.body = body;
  return forward(req, res);
}

server.on('request', (req, res) => {
  const started = Date.now();
  if (VERBOSE) {
    res.on('finish', () => log(`${req.method} ${req.originalUrl ?? req.url} -> ${res.statusCode} (${Date.now() - started}ms)`));
  }
  const url = new URL(req.url, origin);
  let work;
  if (url.pathname === '/__test' || url.pathname.startsWith('/__test/')) {
    work = handleTestHook(req, res, url);
  } else if (url.pathname === PREFIX || url.pathname.startsWith(`${PREFIX}/`)) {
    work = handleRealm(req, res, url);
  } else {
    work = Promise.resolve(sendJson(res, 404, { error: 'RESTEASY003210: Could not find resource for full path' }));
  }
  Promise.resolve(work).catch((err) => {
    log('request failed', req.method, req.url, err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});

// ---------------------------------------------------------------------------------------
// lifecycle

let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${reason})`);
  server.close();
  server.closeAllConnections?.();
  setImmediate(() => process.exit(0));
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (!IGNORE_STDIN) {
  process.stdin.on('end', () => shutdown('stdin EOF'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.on('data', () => {});
  process.stdin.resume();
}

log(`listening on ${origin}, issuer ${issuer}, token ttl ${TOKEN_TTL}s, refresh ttl ${REFRESH_TTL}s, session max ${SESSION_MAX}s, `
  + `device ttl ${DEVICE_TTL}s interval ${DEVICE_INTERVAL}s, refresh rotation ${ROTATE_REFRESH ? 'on' : 'off'}`);
process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
