// tugboat's dashboard (docs/ui.md). Plain JavaScript, no build step. Every call goes to the
// /v1 API with the token from the sign-in form as `Authorization: Bearer`; the token lives in
// this tab's sessionStorage only, never in a URL. The page lists services, instances, nodes
// and events once, then follows each with the API's watch (a long poll from the list's
// revision + 1) and lists again when something changed. Text from the cluster is only ever
// set as text (textContent), never parsed as HTML.
'use strict';

const TOKEN_KEY = 'tugboat.token';
const WATCH_SECONDS = 25;
const RETRY_MS = 2000;
const EVENTS_SHOWN = 100;
const LOG_KEEP_CHARS = 64 * 1024;
const ARMED_MS = 4000;
const KINDS = ['services', 'instances', 'nodes', 'events'];
const NOTHING = '–';

const $ = (id) => document.getElementById(id);

/** The API refused the token (401): back to the sign-in form. */
class Unauthorized extends Error {}

/** Any other answer that is not a success, with the API's message. */
class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** What the page shows, as the API last listed it. */
const cluster = { services: [], instances: [], nodes: [], events: [], autoscale: new Map() };

/** The signed-in session: its token, and what stops its watches and streams. */
let session = null;
/** The log stream being shown. */
let logStream = null;

// ---- API calls ----

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || `${response.status} ${response.statusText}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

async function call(s, method, path, body, signal) {
  const headers = { Authorization: `Bearer ${s.token}` };
  const init = { method, headers, signal: signal || s.stop.signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized(await errorMessage(response));
  if (!response.ok) throw new ApiFailure(response.status, await errorMessage(response));
  return response;
}

async function getJson(s, path) {
  return (await call(s, 'GET', path)).json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const path = (...parts) => parts.map(encodeURIComponent).join('/');

// ---- session ----

function showLogin(message) {
  if (session) session.stop.abort();
  session = null;
  closeLogs();
  $('dashboard').hidden = true;
  $('logout').hidden = true;
  $('live').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('token').focus();
}

/** A call failed for the whole session: a refused token signs out; the rest is shown. */
function sessionFailed(s, error) {
  if (session !== s) return;
  if (error instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(`The server refused the token: ${error.message}`);
  } else {
    notice(error.message, true);
  }
}

async function signIn(token) {
  if (session) session.stop.abort();
  const s = { token, stop: new AbortController() };
  session = s;
  let from;
  try {
    from = await Promise.all(KINDS.map((kind) => list(s, kind)));
  } catch (error) {
    if (session !== s) return;
    sessionStorage.removeItem(TOKEN_KEY);
    const why = error instanceof Unauthorized ? 'The server refused the token' : 'Cannot load the cluster';
    showLogin(`${why}: ${error.message}`);
    return;
  }
  if (session !== s) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('logout').hidden = false;
  setLive(true);
  KINDS.forEach((kind, i) => follow(s, kind, from[i]));
}

function setLive(live, why) {
  const badge = $('live');
  badge.hidden = false;
  badge.className = live ? 'badge live' : 'badge down';
  badge.textContent = live ? 'live' : 'reconnecting';
  badge.title = live ? 'following the cluster through the watch API' : why || '';
}

// ---- lists and watches ----

/** Lists one kind into `cluster` and redraws; the revision to watch from. */
async function list(s, kind) {
  const listed = await getJson(s, `/v1/${kind}`);
  if (kind === 'services') await loadAutoscale(s, listed.items);
  if (session !== s) return listed.revision + 1;
  cluster[kind] = kind === 'events' ? listed.items.slice(-EVENTS_SHOWN) : listed.items;
  render();
  return listed.revision + 1;
}

/** The autoscaler's last decision, in words, for each autoscaled service. */
async function loadAutoscale(s, services) {
  const decisions = new Map();
  for (const service of services.filter((sv) => sv.spec.autoscale)) {
    try {
      const described = await getJson(s, `/v1/services/${path(service.name)}`);
      if (described.autoscale) decisions.set(service.name, described.autoscale);
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
    }
  }
  cluster.autoscale = decisions;
}

/** Follows one kind for as long as the session lasts. */
async function follow(s, kind, from) {
  while (session === s) {
    try {
      const batch = await getJson(s, `/v1/watch/${kind}?revision=${from}&timeout_seconds=${WATCH_SECONDS}`);
      from = batch.revision + 1;
      if (kind === 'services' && batch.changes.length === 0 && cluster.services.some((sv) => sv.spec.autoscale)) {
        // The autoscaler's decisions live in the server's memory, not the store, so no
        // watch sees them: asked again whenever the services' watch comes back empty.
        await loadAutoscale(s, cluster.services);
        render();
      }
      if (batch.changes.length > 0) {
        if (kind === 'events') {
          const added = batch.changes.filter((c) => c.type === 'put' && c.object).map((c) => c.object);
          cluster.events = cluster.events.concat(added).slice(-EVENTS_SHOWN);
          render();
        } else {
          from = Math.max(from, await list(s, kind));
        }
      }
      if (session !== s) return;
      setLive(true);
    } catch (error) {
      if (session !== s || error.name === 'AbortError') return;
      if (error instanceof Unauthorized) return sessionFailed(s, error);
      // 410: the revision was compacted away; anything else: the server is away. List
      // again (after a pause, unless compacted) and watch from there.
      if (!(error instanceof ApiFailure && error.status === 410)) {
        setLive(false, error.message);
        await sleep(RETRY_MS);
      }
      try {
        from = await list(s, kind);
      } catch (again) {
        if (again instanceof Unauthorized) return sessionFailed(s, again);
      }
    }
  }
}

// ---- actions ----

/** A line at the top: what the last action did, or what went wrong. It stays until the
 * next one: a line that went away by itself would move the page under the pointer. */
function notice(text, isError) {
  const p = $('notice');
  p.hidden = false;
  p.textContent = text;
  p.className = isError ? 'error' : '';
}

async function act(what, method, url, body) {
  const s = session;
  if (!s) return;
  try {
    await call(s, method, url, body);
    notice(`${what}: done`);
  } catch (error) {
    if (error instanceof Unauthorized) return sessionFailed(s, error);
    if (error.name !== 'AbortError') notice(`${what}: ${error.message}`, true);
  }
}

/** A button; with `confirmText`, the first click arms it and a second one within a few
 * seconds acts (no modal dialog). `run` gets the row's current object. */
function actionButton(row, label, name, run, confirmText) {
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  button.dataset.action = name;
  let timer = null;
  const disarm = () => {
    clearTimeout(timer);
    button.classList.remove('armed');
    button.textContent = button.dataset.label || label;
  };
  button.addEventListener('click', async () => {
    if (confirmText && !button.classList.contains('armed')) {
      button.classList.add('armed');
      button.textContent = confirmText;
      timer = setTimeout(disarm, ARMED_MS);
      return;
    }
    disarm();
    button.disabled = true;
    try {
      await run(row.item);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function scaleControls(row) {
  const input = document.createElement('input');
  input.type = 'number';
  input.min = '0';
  input.step = '1';
  input.setAttribute('aria-label', 'replicas');
  input.addEventListener('input', () => {
    input.dataset.edited = '1';
  });
  const button = actionButton(row, 'Scale', 'scale', async (service) => {
    const replicas = Number(input.value);
    if (!Number.isInteger(replicas) || replicas < 0) {
      notice(`Scale ${service.name}: replicas must be a whole number, 0 or more`, true);
      return;
    }
    await act(`Scale ${service.name} to ${replicas}`, 'PATCH', `/v1/services/${path(service.name)}`, { replicas });
    delete input.dataset.edited;
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') button.click();
  });
  return [input, button];
}

// ---- logs ----

function closeLogs() {
  if (logStream) logStream.abort();
  logStream = null;
  $('logs-panel').hidden = true;
}

function appendLog(text) {
  const pre = $('logs');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  let shown = pre.textContent + text;
  if (shown.length > LOG_KEEP_CHARS) shown = shown.slice(shown.length - LOG_KEEP_CHARS);
  pre.textContent = shown;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

/** The instance's last lines, then what it writes, streamed (fetch's body reader: the
 * token goes in a header, which EventSource could not send). */
async function openLogs(instance) {
  const s = session;
  if (!s) return;
  closeLogs();
  const stream = new AbortController();
  logStream = stream;
  s.stop.signal.addEventListener('abort', () => stream.abort());
  $('logs-of').textContent = instance.id;
  $('logs').textContent = '';
  $('logs-panel').hidden = false;
  try {
    const url = `/v1/instances/${path(instance.id)}/logs?follow=true&tail=200`;
    const response = await call(s, 'GET', url, undefined, stream.signal);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      appendLog(decoder.decode(value, { stream: true }));
    }
    appendLog('\n[the log ended]\n');
  } catch (error) {
    if (error.name === 'AbortError' || logStream !== stream) return;
    if (error instanceof Unauthorized) return sessionFailed(s, error);
    appendLog(`\n[${error.message}]\n`);
  }
}

// ---- drawing ----

function text(tag, content, className) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

/** A cell's content in one box (a phone's card lays out the label beside it). */
function cellValue(...parts) {
  const value = document.createElement('div');
  value.className = 'value';
  value.append(...parts);
  return value;
}

/** Sets a cell to a main line and an optional muted second line. */
function setCell(td, main, sub, className) {
  const parts = [text('span', main, className)];
  if (sub) parts.push(text('span', sub, 'sub'));
  td.replaceChildren(cellValue(...parts));
  // Nothing to say: a phone leaves the line out of the card.
  td.classList.toggle('nothing', main === NOTHING && !sub);
}

/** Keeps a table's rows in step with `items`, by key: rows are made once (their inputs and
 * buttons survive updates), then updated, reordered, and removed when gone. */
function syncRows(table, items, key, build, update) {
  const tbody = table.tBodies[0];
  const labels = [...table.tHead.rows[0].cells].map((th) => th.textContent);
  if (!tbody.rowsByKey) tbody.rowsByKey = new Map();
  const rows = tbody.rowsByKey;
  const seen = new Set();
  let previous = null;
  for (const item of items) {
    const k = key(item);
    seen.add(k);
    let row = rows.get(k);
    if (!row) {
      row = document.createElement('tr');
      row.dataset.key = k;
      labels.forEach((label) => {
        const td = document.createElement('td');
        td.dataset.label = label;
        row.appendChild(td);
      });
      row.item = item;
      build(row);
      rows.set(k, row);
    }
    row.item = item;
    update(row, item);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== wanted) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const [k, row] of rows) {
    if (!seen.has(k)) {
      row.remove();
      rows.delete(k);
    }
  }
}

function cpuMillis(value) {
  if (typeof value === 'number') return Math.round(value * 1000);
  if (typeof value !== 'string') return 0;
  return value.endsWith('m') ? Number(value.slice(0, -1)) || 0 : Math.round(Number(value) * 1000) || 0;
}

function bytes(value) {
  return typeof value === 'number' ? value : Number(value) || 0;
}

/** What an instance reserves on its node: its requests, else its limits (as the scheduler). */
function requested(spec) {
  const r = (spec && spec.resources) || {};
  const requests = r.requests || {};
  const limits = r.limits || {};
  return {
    cpu: cpuMillis(requests.cpu !== undefined ? requests.cpu : limits.cpu),
    memory: bytes(requests.memory !== undefined ? requests.memory : limits.memory),
  };
}

function humanCpu(millis) {
  return millis % 1000 === 0 ? `${millis / 1000}` : `${millis}m`;
}

function humanBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}

function percent(used, of) {
  return of > 0 ? ` (${Math.round((used * 100) / of)}%)` : '';
}

function meterCell(td, used, capacity, show) {
  const meter = document.createElement('meter');
  meter.min = 0;
  meter.max = capacity || 1;
  meter.value = used;
  meter.high = meter.max * 0.9;
  td.replaceChildren(cellValue(meter, text('span', ` ${show(used)} / ${show(capacity)}${percent(used, capacity)}`)));
}

const holdsResources = (i) => i.phase !== 'failed' && i.phase !== 'lost';
const isReady = (i) => i.phase === 'running' && i.ready;

function renderServices() {
  const table = $('services');
  const services = [...cluster.services].sort((a, b) => a.name.localeCompare(b.name));
  $('services-empty').hidden = services.length > 0;
  syncRows(
    table,
    services,
    (s) => s.name,
    (row) => {
      const actions = row.cells[5];
      actions.className = 'actions';
      actions.append(...scaleControls(row));
      actions.append(
        actionButton(row, 'Undo rollout', 'undo', (s) => act(`Undo the rollout of ${s.name}`, 'POST', `/v1/services/${path(s.name)}/rollout/undo`), 'Undo: sure?'),
      );
    },
    (row, s) => {
      const c = row.cells;
      const mine = cluster.instances.filter((i) => i.service === s.name);
      const ready = mine.filter(isReady).length;
      const desired = s.spec.replicas;
      setCell(c[0], s.name, s.address || '', 'mono');
      setCell(c[1], `${ready}/${desired}`, mine.length !== ready ? `${mine.length} instances` : '', ready >= desired ? 'state-ok' : 'state-warn');
      const rollout = s.rollout || { state: 'complete' };
      const rolloutClass = { complete: 'state-ok', progressing: 'state-warn', 'rolled-back': 'state-bad' }[rollout.state];
      setCell(c[2], rollout.state, rollout.message || '', rolloutClass);
      const auto = s.spec.autoscale;
      if (auto) {
        const target = Object.entries(auto.target || {}).map(([k, v]) => `${k} ${v}`).join(', ');
        setCell(c[3], `${auto.min}–${auto.max}, target ${target}`, cluster.autoscale.get(s.name) || '');
      } else {
        setCell(c[3], NOTHING);
      }
      setCell(c[4], s.spec.image, `generation ${s.generation}`, 'mono');
      const input = c[5].querySelector('input');
      if (!input.dataset.edited && document.activeElement !== input) input.value = String(desired);
      c[5].querySelector('[data-action=undo]').disabled = !(s.history && s.history.length);
    },
  );
}

function instanceState(i) {
  if (i.crash_looping) return ['crash-looping', 'state-bad'];
  if (i.phase === 'running') return i.ready ? ['running, ready', 'state-ok'] : ['running, not ready', 'state-warn'];
  if (i.phase === 'failed' || i.phase === 'lost') return [i.phase, 'state-bad'];
  return [i.phase, 'state-warn'];
}

function renderInstances() {
  const instances = [...cluster.instances].sort(
    (a, b) => a.service.localeCompare(b.service) || (a.slot || 0) - (b.slot || 0) || a.id.localeCompare(b.id),
  );
  syncRows(
    $('instances'),
    instances,
    (i) => i.id,
    (row) => {
      const actions = row.cells[6];
      actions.className = 'actions';
      actions.append(
        // Not awaited: the stream lasts until closed, the button is free at once.
        actionButton(row, 'Logs', 'logs', (i) => {
          openLogs(i);
        }),
        actionButton(row, 'Restart', 'restart', (i) => act(`Restart ${i.id} (replaced by a new instance)`, 'DELETE', `/v1/instances/${path(i.id)}`), 'Restart: sure?'),
      );
      row.cells[2].className = 'restarts';
      row.cells[5].className = 'message';
    },
    (row, i) => {
      const c = row.cells;
      const [state, stateClass] = instanceState(i);
      setCell(c[0], i.id, i.service, 'mono');
      setCell(c[1], state, i.pending_reason || '', stateClass);
      c[2].textContent = String(i.restarts || 0);
      c[2].title = i.carried_restarts ? `and ${i.carried_restarts} of the instances it replaced` : '';
      setCell(c[3], i.node || NOTHING);
      setCell(c[4], i.address || NOTHING, '', 'mono');
      const exit = i.last_exit ? `last exit: ${i.last_exit.message || i.last_exit.reason}` : '';
      setCell(c[5], i.message || '', exit);
    },
  );
}

function renderNodes() {
  const nodes = [...cluster.nodes].sort((a, b) => a.name.localeCompare(b.name));
  syncRows(
    $('nodes'),
    nodes,
    (n) => n.name,
    (row) => {
      const actions = row.cells[5];
      actions.className = 'actions';
      actions.append(
        actionButton(row, 'Cordon', 'cordon', (n) => {
          const verb = n.cordoned || n.draining ? 'uncordon' : 'cordon';
          return act(`${verb[0].toUpperCase()}${verb.slice(1)} ${n.name}`, 'POST', `/v1/nodes/${path(n.name)}/${verb}`);
        }),
        actionButton(row, 'Drain', 'drain', (n) => act(`Drain ${n.name}`, 'POST', `/v1/nodes/${path(n.name)}/drain`), 'Drain: sure?'),
      );
    },
    (row, n) => {
      const c = row.cells;
      const used = { cpu: 0, memory: 0 };
      const here = cluster.instances.filter((i) => i.node === n.name && holdsResources(i));
      for (const i of here) {
        const r = requested(i.spec);
        used.cpu += r.cpu;
        used.memory += r.memory;
      }
      setCell(c[0], n.name, `${here.length} instances`);
      const scheduling = n.draining ? ', draining' : n.cordoned ? ', cordoned' : '';
      setCell(c[1], `${n.status}${scheduling}`, '', n.status === 'ready' && !scheduling ? 'state-ok' : n.status === 'ready' ? 'state-warn' : 'state-bad');
      meterCell(c[2], used.cpu, n.capacity.cpu_millis, humanCpu);
      meterCell(c[3], used.memory, n.capacity.memory_bytes, humanBytes);
      setCell(c[4], n.address || NOTHING, n.subnet || '', 'mono');
      const toggle = c[5].querySelector('[data-action=cordon]');
      toggle.dataset.label = n.cordoned || n.draining ? 'Uncordon' : 'Cordon';
      if (!toggle.classList.contains('armed')) toggle.textContent = toggle.dataset.label;
      c[5].querySelector('[data-action=drain]').disabled = !!n.draining;
    },
  );
}

function renderEvents() {
  const items = [...cluster.events].reverse().map((e) => {
    const li = document.createElement('li');
    const time = text('time', new Date(e.time_ms).toLocaleString());
    time.dateTime = new Date(e.time_ms).toISOString();
    li.append(time, text('span', `${e.kind} ${e.name}`, 'mono'), ' ', text('span', e.reason, 'reason'), text('span', e.message));
    return li;
  });
  $('events').replaceChildren(...items);
}

function render() {
  renderServices();
  renderInstances();
  renderNodes();
  renderEvents();
}

// ---- start ----

function start() {
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('token').value.trim();
    $('token').value = '';
    if (token) signIn(token);
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('');
  });
  $('logs-close').addEventListener('click', closeLogs);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showLogin('');
}

start();
