#!/usr/bin/env node
// Approve (or deny) a device-flow user code on the test IdP the way a person in a browser
// would: fetch the server's own HTML pages, keep its cookies, submit its forms.
//
//   node tests/idp/approve.mjs <verification_uri_complete | verification_uri>
//        [--user-code CODE] [--deny] [--deny-at confirm|login] [--login alice] [--password pw]
//
// --deny presses the "[ Abort ]" button of the "Confirm Device" page (the code then answers
// access_denied at the token endpoint); --deny-at login instead signs in nowhere and follows
// the "[ Cancel ]" link of the sign-in page (also access_denied).
// Exit status: 0 when the code was approved (or, with --deny, denied); 1 otherwise; 2 usage.
// What happened is printed to stderr, one line per step.

import { parseArgs } from 'node:util';

function usage(message) {
  if (message) process.stderr.write(`approve: ${message}\n`);
  process.stderr.write('usage: node approve.mjs <verification_uri_complete|verification_uri> '
    + '[--user-code CODE] [--deny] [--deny-at confirm|login] [--login NAME] [--password PW]\n');
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      'user-code': { type: 'string' },
      deny: { type: 'boolean', default: false },
      'deny-at': { type: 'string' },
      login: { type: 'string', default: 'alice' },
      password: { type: 'string', default: 'password' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  usage(err.message);
}
const { values: opts, positionals } = parsed;
if (opts.help) usage();
if (positionals.length !== 1) usage('exactly one URL is required');

const denyAt = opts['deny-at'] ?? (opts.deny ? 'confirm' : undefined);
if (denyAt !== undefined && denyAt !== 'confirm' && denyAt !== 'login') {
  usage('--deny-at must be confirm or login');
}
const deny = denyAt !== undefined;

let startUrl;
try {
  startUrl = new URL(positionals[0]);
} catch {
  usage(`not a URL: ${positionals[0]}`);
}
const userCode = opts['user-code'] ?? startUrl.searchParams.get('user_code') ?? undefined;

function say(message) {
  process.stderr.write(`approve: ${message}\n`);
}

function finish(ok, message) {
  say(message);
  process.exit(ok ? 0 : 1);
}

// ----- a small cookie jar (name, path; host-only; Max-Age/Expires honoured)

const jar = new Map(); // `${name};${path}` -> { name, value, path, expires }

function storeCookies(response, url) {
  for (const header of response.headers.getSetCookie()) {
    const [pair, ...attrs] = header.split(';');
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    let path = url.pathname.replace(/\/[^/]*$/, '') || '/';
    let expires = Infinity;
    for (const attr of attrs) {
      const [k, ...v] = attr.split('=');
      const key = k.trim().toLowerCase();
      const val = v.join('=').trim();
      if (key === 'path' && val.startsWith('/')) path = val;
      else if (key === 'max-age') expires = Date.now() + Number(val) * 1000;
      else if (key === 'expires' && expires === Infinity) expires = Date.parse(val);
    }
    const key = `${name};${path}`;
    if (expires <= Date.now()) jar.delete(key);
    else jar.set(key, { name, value, path, expires });
  }
}

function cookieHeader(url) {
  const now = Date.now();
  const matches = [...jar.values()]
    .filter((c) => c.expires > now
      && (url.pathname === c.path || url.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`)))
    .sort((a, b) => b.path.length - a.path.length);
  return matches.map((c) => `${c.name}=${c.value}`).join('; ');
}

// ----- HTTP with manual redirects so every hop's cookies are kept

async function request(method, url, form) {
  let current = new URL(url);
  let body = form ? new URLSearchParams(form).toString() : undefined;
  for (let hop = 0; hop < 20; hop += 1) {
    const headers = { accept: 'text/html' };
    const cookies = cookieHeader(current);
    if (cookies) headers.cookie = cookies;
    if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
    say(`${method} ${current.pathname}${current.search}`);
    const response = await fetch(current, { method, headers, body, redirect: 'manual' });
    storeCookies(response, current);
    const location = response.headers.get('location');
    if (response.status >= 300 && response.status < 400 && location) {
      await response.arrayBuffer();
      current = new URL(location, current);
      if (response.status !== 307 && response.status !== 308) {
        method = 'GET';
        body = undefined;
      }
      continue;
    }
    return { status: response.status, url: current, html: await response.text() };
  }
  throw new Error('too many redirects');
}

// ----- HTML scraping (the pages are oidc-provider's own, simple and well-formed)

function attrs(tag) {
  const out = {};
  for (const m of tag.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*(?:=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
    out[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return out;
}

function decodeEntities(s) {
  return s.replace(/&(#x[0-9a-f]+|#\d+|amp|lt|gt|quot|apos);/gi, (_, e) => {
    const k = e.toLowerCase();
    if (k === 'amp') return '&';
    if (k === 'lt') return '<';
    if (k === 'gt') return '>';
    if (k === 'quot') return '"';
    if (k === 'apos') return "'";
    return String.fromCodePoint(k.startsWith('#x') ? parseInt(k.slice(2), 16) : parseInt(k.slice(1), 10));
  });
}

function parseForms(html) {
  const forms = [];
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const a = attrs(m[1]);
    const fields = [];
    for (const input of m[2].matchAll(/<input\b([^>]*)>/gi)) fields.push(attrs(input[1]));
    forms.push({
      id: a.id, action: a.action, method: (a.method ?? 'get').toUpperCase(), fields,
    });
  }
  // buttons may live outside their form (form="id")
  const buttons = [...html.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)]
    .map((m) => ({ ...attrs(m[1]), text: m[2].replace(/<[^>]*>/g, '').trim() }));
  return { forms, buttons };
}

function formValues(form) {
  const values = {};
  for (const f of form.fields) if (f.name) values[f.name] = f.value ?? '';
  return values;
}

function title(html) {
  return html.match(/<title>([\s\S]*?)<\/title>/i)?.[1].trim() ?? '';
}

// ----- the walk

let page = await request('GET', startUrl);

for (let step = 0; step < 15; step += 1) {
  const { html, url, status } = page;
  const pageTitle = title(html);
  const { forms, buttons } = parseForms(html);
  const find = (pred) => forms.find(pred);

  if (/Sign-in Success/i.test(pageTitle)) {
    if (deny) finish(false, 'expected to deny, but the code was approved');
    finish(true, `approved as ${opts.login}`);
  }
  if (/interrupted/i.test(html)) {
    if (deny) finish(true, `denied (${denyAt})`);
    finish(false, 'the sign-in request was interrupted');
  }
  if (/The code you entered is incorrect/i.test(html)) {
    finish(false, `the server rejected user code ${userCode ?? '(none)'} (unknown, expired or already used)`);
  }
  if (/There was an error processing your request/i.test(html) || /<pre id="error">/.test(html)) {
    const err = html.match(/<pre id="error">([\s\S]*?)<\/pre>/)?.[1];
    const desc = html.match(/<pre id="error_description">([\s\S]*?)<\/pre>/)?.[1];
    if (deny && (err === 'access_denied' || /error processing/i.test(html))) {
      finish(true, `denied (${denyAt})${err ? `: ${err}` : ''}`);
    }
    finish(false, `error page (HTTP ${status}): ${err ?? 'There was an error processing your request'}${desc ? ` - ${decodeEntities(desc)}` : ''}`);
  }

  const confirmForm = find((f) => f.fields.some((x) => x.name === 'confirm'));
  const loginForm = find((f) => f.fields.some((x) => x.name === 'prompt' && x.value === 'login'));
  const consentForm = find((f) => f.fields.some((x) => x.name === 'prompt' && x.value === 'consent'));
  const codeForm = find((f) => f.fields.some((x) => x.name === 'user_code'));

  if (confirmForm) {
    const values = formValues(confirmForm);
    if (denyAt === 'confirm') {
      const abort = buttons.find((b) => b.name === 'abort' && (!b.form || b.form === confirmForm.id));
      if (!abort) finish(false, 'no abort button on the confirm page');
      values[abort.name] = abort.value ?? '';
      say(`confirm page for ${values.user_code}: pressing "${abort.text}"`);
    } else {
      say(`confirm page for ${values.user_code}: pressing "Continue"`);
    }
    page = await request(confirmForm.method, new URL(confirmForm.action, url), values);
    continue;
  }

  if (loginForm) {
    if (denyAt === 'login') {
      const link = [...html.matchAll(/<a\b([^>]*)>([\s\S]*?)<\/a>/gi)]
        .map((m) => attrs(m[1]).href).find((href) => href && /\/abort$/.test(new URL(href, url).pathname));
      if (!link) finish(false, 'no abort link on the sign-in page');
      say('sign-in page: following the cancel link');
      page = await request('GET', new URL(link, url));
      continue;
    }
    const values = formValues(loginForm);
    values.login = opts.login;
    values.password = opts.password;
    say(`sign-in page: signing in as ${opts.login}`);
    page = await request(loginForm.method, new URL(loginForm.action, url), values);
    continue;
  }

  if (consentForm) {
    say('consent page: pressing "Continue"');
    page = await request(consentForm.method, new URL(consentForm.action, url), formValues(consentForm));
    continue;
  }

  if (codeForm) {
    const values = formValues(codeForm);
    const visible = codeForm.fields.find((x) => x.name === 'user_code' && x.type !== 'hidden');
    if (visible || !values.user_code) {
      if (!userCode) finish(false, 'the page asks for a user code: pass --user-code or a verification_uri_complete');
      values.user_code = userCode;
      say(`code page: entering ${userCode}`);
    } else {
      say(`code page: submitting ${values.user_code}`);
    }
    page = await request(codeForm.method, new URL(codeForm.action, url), values);
    continue;
  }

  finish(false, `unexpected page (HTTP ${status}, "${pageTitle}") at ${url.pathname}:\n${html.slice(0, 2000)}`);
}

finish(false, 'gave up after too many steps');
