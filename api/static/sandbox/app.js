'use strict';
(function () {
  const KEY = 'penguinmails.sandbox.key';
  const API = '/api/v1/sandbox/messages';
  const $ = (id) => document.getElementById(id);
  let cursor = null;

  function show(id, visible) { $(id).hidden = !visible; }
  function fail(text) { $('error').textContent = text; show('error', Boolean(text)); }
  function cell(row, text) {
    const td = document.createElement('td');
    td.textContent = text;
    row.appendChild(td);
  }
  function when(iso) { return new Date(iso).toLocaleString(); }

  async function call(path) {
    const key = sessionStorage.getItem(KEY);
    const res = await fetch(path, { headers: { Authorization: 'Bearer ' + key } });
    const body = await res.json().catch(() => null);
    if (res.status === 401) { sessionStorage.removeItem(KEY); route(); }
    if (!body || !body.success) {
      throw new Error(body && body.error ? body.error.message : 'HTTP ' + res.status);
    }
    return body.data;
  }

  async function list(more) {
    show('message', false);
    show('list', true);
    if (!more) { $('rows').replaceChildren(); cursor = null; }
    const query = '?limit=50' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : '');
    const page = await call(API + query);
    for (const m of page.items) {
      const row = document.createElement('tr');
      cell(row, when(m.received_at));
      cell(row, m.from);
      cell(row, m.to);
      cell(row, m.subject || '(no subject)');
      row.addEventListener('click', () => { location.hash = '#/messages/' + m.id; });
      $('rows').appendChild(row);
    }
    cursor = page.next_cursor;
    show('more', page.has_more);
    show('empty', $('rows').children.length === 0);
  }

  function tab(name) {
    for (const el of document.querySelectorAll('.tab')) el.hidden = el.id !== 'tab-' + name;
    for (const b of document.querySelectorAll('nav button')) {
      b.setAttribute('aria-pressed', String(b.dataset.tab === name));
    }
  }

  async function message(id) {
    show('list', false);
    const m = await call(API + '/' + encodeURIComponent(id));
    $('subject').textContent = m.subject || '(no subject)';
    const summary = $('summary');
    summary.replaceChildren();
    const fields = [['From', m.from], ['To', m.to], ['Received', when(m.received_at)],
      ['Envelope from', m.mail_from], ['Envelope to', m.rcpt_tos.join(', ')],
      ['Size', m.size + ' bytes']];
    for (const [name, value] of fields) {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value;
      summary.append(dt, dd);
    }
    const dkim = $('dkim');
    dkim.className = m.dkim.result;
    dkim.textContent = 'DKIM: ' + m.dkim.result + (m.dkim.domain
      ? ' (d=' + m.dkim.domain + ', s=' + m.dkim.selector + ')' : '') +
      m.dkim.signatures.filter((s) => s.reason).map((s) => '; ' + s.reason).join('');
    const rows = $('tab-headers').tBodies[0];
    rows.replaceChildren();
    for (const h of m.headers) {
      const row = document.createElement('tr');
      cell(row, h.name);
      cell(row, h.value);
      rows.appendChild(row);
    }
    $('tab-text').textContent = m.text === null ? '(no text part)' : m.text;
    $('tab-raw').textContent = m.raw;
    // Links open in a new tab (the tracker's click redirect), outside the sandbox.
    $('tab-html').srcdoc = m.html === null ? '' : '<base target="_blank">' + m.html;
    tab(m.html === null ? 'text' : 'html');
    show('message', true);
  }

  async function route() {
    fail('');
    const signedIn = Boolean(sessionStorage.getItem(KEY));
    show('login', !signedIn);
    show('signout', signedIn);
    if (!signedIn) { show('list', false); show('message', false); return; }
    const match = location.hash.match(/^#\/messages\/(\d+)$/);
    try {
      if (match) await message(match[1]); else await list(false);
    } catch (err) { fail(err.message); }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login').addEventListener('submit', (event) => {
      event.preventDefault();
      const key = $('key').value.trim();
      if (key) sessionStorage.setItem(KEY, key);
      $('key').value = '';
      route();
    });
    $('signout').addEventListener('click', () => { sessionStorage.removeItem(KEY); route(); });
    $('more').addEventListener('click', () => list(true).catch((err) => fail(err.message)));
    for (const b of document.querySelectorAll('nav button')) {
      b.addEventListener('click', () => tab(b.dataset.tab));
    }
    window.addEventListener('hashchange', route);
    route();
  });
})();
