#!/usr/bin/env node
// Approves a device-flow user code on a real Keycloak the way a person in a browser would,
// with plain HTTP: follow the verification URL, keep Keycloak's cookies, submit its own
// login form (and its consent form, when the client asks for consent).
//
//   node tests/keycloak/approve.mjs <verification_uri_complete> [--login alice] [--password pw]
//
// Exit status: 0 when Keycloak said the device is signed in; 1 otherwise; 2 usage.
// Each step is printed to stderr.

import { parseArgs } from 'node:util';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    login: { type: 'string', default: 'alice' },
    password: { type: 'string', default: 'alice-password' },
  },
});
if (positionals.length !== 1) {
  process.stderr.write('usage: node approve.mjs <verification_uri_complete> [--login NAME] [--password PW]\n');
  process.exit(2);
}

const say = (m) => process.stderr.write(`approve: ${m}\n`);
const fail = (m) => { say(m); process.exit(1); };

// Keycloak marks its cookies Secure; on loopback http a browser still sends them
// (localhost is a secure context), so this jar ignores the flag. Names are per path.
const jar = new Map();
function store(response) {
  for (const header of response.headers.getSetCookie()) {
    const [pair, ...attrs] = header.split(';');
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const expired = attrs.some((a) => /^\s*max-age=0\s*$/i.test(a))
      || attrs.some((a) => /^\s*expires=/i.test(a) && Date.parse(a.split('=')[1]) < Date.now());
    if (expired || value === '' || value === '""') jar.delete(name);
    else jar.set(name, value);
  }
}
const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function request(url, init = {}) {
  let current = new URL(url);
  let options = init;
  for (let hop = 0; hop < 10; hop += 1) {
    const response = await fetch(current, {
      ...options,
      redirect: 'manual',
      headers: { ...(options.headers ?? {}), cookie: cookieHeader() },
    });
    store(response);
    const location = response.headers.get('location');
    if (response.status >= 300 && response.status < 400 && location) {
      current = new URL(location, current);
      say(`redirected to ${current.pathname}`);
      options = {};
      continue;
    }
    return { url: current, status: response.status, body: await response.text() };
  }
  return fail('too many redirects');
}

const decode = (s) => s.replace(/&amp;/g, '&').replace(/&quot;/g, '"').replace(/&#39;/g, "'")
  .replace(/&lt;/g, '<').replace(/&gt;/g, '>');

function form(page, id) {
  const forms = [...page.body.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)];
  const match = forms.find((f) => id === undefined || new RegExp(`id="${id}"`).test(f[1]));
  if (!match) return undefined;
  const action = /action="([^"]*)"/i.exec(match[1]);
  const fields = new URLSearchParams();
  for (const input of match[2].matchAll(/<input\b([^>]*)>/gi)) {
    const name = /name="([^"]*)"/i.exec(input[1]);
    const value = /value="([^"]*)"/i.exec(input[1]);
    const type = /type="([^"]*)"/i.exec(input[1]);
    if (name && (!type || !/^(submit|checkbox)$/i.test(type[1]))) {
      fields.set(decode(name[1]), value ? decode(value[1]) : '');
    }
  }
  return { action: new URL(decode(action[1]), page.url), fields };
}

async function submit(f) {
  return request(f.action, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: f.fields.toString(),
  });
}

let page = await request(positionals[0]);
say(`got ${page.url.pathname} (HTTP ${page.status})`);
const login = form(page, 'kc-form-login');
if (!login) fail(`no login form on ${page.url}: ${page.body.slice(0, 400)}`);
login.fields.set('username', opts.login);
login.fields.set('password', opts.password);
page = await submit(login);
say(`signed in as ${opts.login}: ${page.url.pathname} (HTTP ${page.status})`);

const consent = /name="accept"/.test(page.body) ? form(page) : undefined;
if (consent) {
  consent.fields.set('accept', 'Yes');
  page = await submit(consent);
  say(`consent given: ${page.url.pathname} (HTTP ${page.status})`);
}
const title = /<title>([^<]*)<\/title>/i.exec(page.body)?.[1] ?? '';
const message = (/id="kc-page-title"[^>]*>([\s\S]*?)</i.exec(page.body)?.[1] ?? '').trim();
if (/Device Login Successful|signed in|successful/i.test(`${title} ${message} ${page.body}`)
  && page.status === 200) {
  say(`approved: ${message || title}`);
  process.exit(0);
}
fail(`not approved (HTTP ${page.status}, ${title} ${message}): ${page.body.replace(/\s+/g, ' ').slice(0, 600)}`);
