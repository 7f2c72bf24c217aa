// The jobcast console: an overview per queue (with its limits), the schedules, the workers
// seen, a live job list fed by the firehose (one SSE connection), and a job page with its
// live event log and output streams. No build step: embedded in the binary with /client.js,
// which it uses for a job's own stream.
import { follow, readEvents } from '/client.js';

const LIST_CAP = 300; // rows kept in the job list; older ones fall off the bottom
const FLUSH_MS = 100; // DOM updates are batched at most this often
const OVERVIEW_EVERY_MS = 5000;
const TERMINAL = ['succeeded', 'failed', 'cancelled'];
const OUTPUT_SHOWN = 256 * 1024; // characters of an output stream kept on the page (its tail)
const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

const $ = (sel, root = document) => root.querySelector(sel);
const view = $('#view');

// ---- the API, with an optional key (auth on) -------------------------------------------

const keyStore = {
  get: () => sessionStorage.getItem('jobcast.key'),
  set: (k) => sessionStorage.setItem('jobcast.key', k),
};
let keyWaiters = [];

function askForKey() {
  $('#key').classList.add('show');
  $('#key-input').focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

$('#key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('#key-input').value.trim();
  if (!key) return;
  keyStore.set(key);
  $('#key').classList.remove('show');
  keyWaiters.forEach((w) => w());
  keyWaiters = [];
});

function authHeaders() {
  const key = keyStore.get();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  // Every POST says JSON, even without a body: the server refuses other POSTs (CSRF).
  const json = options.method === 'POST' ? { 'Content-Type': 'application/json' } : {};
  for (;;) {
    const response = await fetch(path, {
      ...options,
      headers: { Accept: 'application/json', ...json, ...authHeaders(), ...(options.headers || {}) },
    });
    if (response.status === 401) {
      await askForKey();
      continue;
    }
    const body = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((body && (body.detail || body.title)) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }
}

// ---- small helpers ----------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}

function ago(iso) {
  if (!iso) return '';
  return duration((Date.now() - Date.parse(iso)) / 1000) + ' ago';
}

// "in 30 s", "in 5 min", "due now": never "in 0 minutes".
function until(iso) {
  if (!iso) return '';
  const s = (Date.parse(iso) - Date.now()) / 1000;
  return s < 0.5 ? 'due now' : `in ${duration(s)}`;
}

function duration(s) {
  if (s < 1) return `${Math.max(0, Math.round(s * 1000))} ms`;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} days`;
}

// The server's hints count whole minutes ("in 0 minutes", "in 1 minutes"): said better.
function hintText(hint) {
  return hint && hint.replace(/\bin (\d+) minutes\b/, (_, n) => (n === '0' ? 'in under a minute' : n === '1' ? 'in 1 minute' : `in ${n} minutes`));
}

const tagText = (tags) => Object.entries(tags || {}).map(([k, v]) => `${k}:${v}`);

function statusBadge(status) {
  return h('span', { class: `status ${status}` }, status);
}

function sparkline(values) {
  const w = 90;
  const hgt = 22;
  const max = Math.max(1, ...values);
  const step = w / Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(hgt - 1 - (v / max) * (hgt - 2)).toFixed(1)}`);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', w);
  svg.setAttribute('height', hgt);
  svg.setAttribute('class', 'spark');
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points.join(' '));
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', '#2563eb');
  line.setAttribute('stroke-width', '1.5');
  svg.append(line);
  return svg;
}

function flash(message, ok) {
  const banner = $('#banner');
  banner.textContent = message;
  banner.className = ok ? 'back' : 'down';
}

// ---- the connection banner --------------------------------------------------------------

const connection = {
  down: false,
  backTimer: null,
  lost(what) {
    $('#conn').className = 'conn down';
    $('#conn').textContent = 'disconnected';
    if (!this.down) flash(`Connection lost (${what}); reconnecting…`, false);
    this.down = true;
    clearTimeout(this.backTimer);
  },
  up() {
    $('#conn').className = 'conn live';
    $('#conn').textContent = 'live';
    if (!this.down) return;
    this.down = false;
    flash('Connection restored; caught up with everything missed.', true);
    this.backTimer = setTimeout(() => {
      $('#banner').className = '';
    }, 4000);
  },
};

// ---- the firehose: one SSE connection for the whole page --------------------------------

// Read with fetch rather than EventSource: it sends the API key as a header (no stream token
// needed), and it hands over a whole network chunk of events per task instead of one task per
// event, which is what keeps the page idle at thousands of events per second.
const firehose = {
  controller: null,
  cursor: null,
  listeners: new Set(),
  retryMs: 1000,
  async open() {
    this.close();
    const controller = (this.controller = new AbortController());
    const current = () => this.controller === controller;
    try {
      const headers = { Accept: 'text/event-stream', ...authHeaders() };
      if (this.cursor) headers['Last-Event-ID'] = this.cursor;
      const response = await fetch('/v1/events', { headers, signal: controller.signal, cache: 'no-store' });
      if (response.status === 401) {
        await askForKey();
        if (current()) this.open();
        return;
      }
      if (response.status !== 200) throw new Error(`HTTP ${response.status}`);
      this.retryMs = 1000;
      connection.up();
      await readEvents(
        response.body,
        (type, id, text) => {
          this.cursor = id || this.cursor;
          let data;
          try {
            data = JSON.parse(text);
          } catch (_) {
            return;
          }
          for (const listener of this.listeners) listener(data);
        },
        current,
      );
    } catch (e) {
      if (!current()) return;
    }
    if (!current()) return;
    connection.lost('live events');
    this.retry();
  },
  retry() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 8000);
  },
  close() {
    const controller = this.controller;
    this.controller = null;
    if (controller) controller.abort();
  },
};

// ---- overview ----------------------------------------------------------------------------

// GET /v1/schedules on a server without schedules (404): not asked again by this page.
let schedulesAbsent = false;

async function loadSchedules() {
  if (schedulesAbsent) return null;
  try {
    return (await api('/v1/schedules')).schedules || [];
  } catch (e) {
    if (e.status === 404 || e.status === 405) schedulesAbsent = true;
    else if (e.status !== 403) throw e;
    return null;
  }
}

// A queue's limits (PATCH /v1/queues/NAME), as "≤ 4 running · 10/s (burst 20)".
function limitsText(q) {
  const parts = [];
  if (q.concurrency != null) parts.push(`≤ ${q.concurrency} running`);
  if (q.rate_per_second != null) {
    const burst = q.burst != null && q.burst !== q.rate_per_second ? ` (burst ${q.burst})` : '';
    parts.push(`${q.rate_per_second}/s${burst}`);
  }
  return parts.join(' · ') || '–';
}

function orphanHint(o) {
  const waited = o.oldest_due_seconds < 60 ? `${Math.max(1, Math.round(o.oldest_due_seconds))} s` : duration(o.oldest_due_seconds);
  return `no live worker takes kind ${o.kind} from queue ${o.queue}: its oldest job has waited ${waited}`;
}

async function renderOverview(root) {
  let data;
  try {
    const [queues, workers, schedules] = await Promise.all([api('/v1/queues'), api('/v1/workers'), loadSchedules()]);
    data = { queues: queues.queues, workers: workers.workers, orphans: workers.kinds_without_worker || [], schedules };
  } catch (e) {
    root.replaceChildren(h('p', { class: 'muted' }, `Overview unavailable: ${e.message}`));
    return;
  }
  // The limits column, once the server knows about queue limits (the fields exist, even null).
  const limits = data.queues.some((q) => 'concurrency' in q || 'rate_per_second' in q);
  const queueRows = data.queues.map((q) => {
    const done = q.succeeded_per_minute.map((n, i) => n + q.failed_per_minute[i]);
    const total = done.reduce((a, b) => a + b, 0);
    const failed = q.failed_per_minute.reduce((a, b) => a + b, 0);
    const button = h(
      'button',
      {
        class: q.paused ? 'primary' : 'danger',
        'data-queue': q.name,
        onclick: async (e) => {
          e.target.disabled = true;
          try {
            await api(`/v1/queues/${encodeURIComponent(q.name)}/${q.paused ? 'resume' : 'pause'}`, { method: 'POST' });
          } catch (err) {
            flash(`Could not change queue ${q.name}: ${err.message}`, false);
          }
          renderOverview(root);
        },
      },
      q.paused ? 'Resume' : 'Pause',
    );
    return h(
      'tr',
      { 'data-queue-row': q.name },
      h('td', {}, h('a', { href: `#/?queue=${encodeURIComponent(q.name)}` }, q.name), ' ', q.paused ? statusBadge('paused') : null),
      // Each count opens the job list filtered to it: "what is failing" is one click.
      ...STATUSES.map((s) =>
        h('td', { class: 'num' }, q.jobs[s] ? h('a', { href: `#/?queue=${encodeURIComponent(q.name)}&status=${s}` }, q.jobs[s]) : 0),
      ),
      h('td', { class: 'num' }, q.oldest_queued_seconds > 0 ? duration(q.oldest_queued_seconds) : '–'),
      limits ? h('td', { class: 'limits' }, limitsText(q)) : null,
      h('td', { class: 'num' }, (total / 15).toFixed(1)),
      h('td', {}, sparkline(done)),
      h('td', { class: 'num' }, total ? `${((100 * failed) / total).toFixed(1)} %` : '–'),
      h('td', {}, button),
    );
  });
  const workerRows = data.workers.map((w) =>
    h(
      'tr',
      {},
      h('td', {}, w.id, ' ', w.alive ? null : h('span', { class: 'muted' }, '(gone)')),
      h('td', {}, w.queues.join(', ')),
      h('td', {}, w.kinds.join(', ')),
      h('td', { class: 'num' }, `${w.running} / ${w.concurrency}`),
      h('td', {}, ago(w.last_heartbeat)),
    ),
  );
  const sections = [
    h(
      'section',
      {},
      h('h2', {}, 'Queues'),
      data.queues.length
        ? h(
            'table',
            {},
            h(
              'thead',
              {},
              h(
                'tr',
                {},
                h('th', {}, 'queue'),
                ...STATUSES.map((s) => h('th', { class: 'num' }, s)),
                h('th', { class: 'num' }, 'oldest queued'),
                limits ? h('th', {}, 'limits') : null,
                h('th', { class: 'num' }, 'jobs/min (15 min)'),
                h('th', {}, 'last 15 min'),
                h('th', { class: 'num' }, 'failure rate'),
                h('th', {}, ''),
              ),
            ),
            h('tbody', {}, queueRows),
          )
        : h('p', { class: 'muted' }, 'No jobs yet.'),
      data.orphans.map((o) => h('p', { class: 'hint', 'data-orphan': o.kind }, `⚠ ${orphanHint(o)} — ${o.jobs} job(s) waiting`)),
    ),
    data.schedules ? schedulesSection(data.schedules, () => renderOverview(root)) : null,
    h(
      'section',
      {},
      h('h2', {}, 'Workers'),
      data.workers.length
        ? h(
            'table',
            {},
            h('thead', {}, h('tr', {}, h('th', {}, 'id'), h('th', {}, 'queues'), h('th', {}, 'kinds'), h('th', { class: 'num' }, 'running'), h('th', {}, 'last heartbeat'))),
            h('tbody', {}, workerRows),
          )
        : h('p', { class: 'muted' }, 'No worker has announced itself in the last hour.'),
    ),
  ];
  root.replaceChildren(...sections.filter((section) => section != null));
}

// The last run of a schedule, whichever way the server spells it.
function lastRun(s) {
  const last = s.last_run || {};
  const at = s.last_run_at || s.last_scheduled_for || last.scheduled_for || last.at || last.created_at;
  const job = s.last_job_id || last.job_id || last.id;
  if (!at && !job) return 'never';
  return h('span', {}, at ? h('span', { title: at }, ago(at)) : null, job ? [' ', h('a', { href: `#/jobs/${job}` }, `job ${job}`)] : null);
}

function schedulesSection(schedules, rerender) {
  const rows = schedules.map((s) =>
    h(
      'tr',
      { 'data-schedule': s.name },
      h('td', {}, s.name, ' ', s.paused ? statusBadge('paused') : null),
      h('td', {}, h('code', {}, s.cron != null ? s.cron : `every ${s.every}`)),
      h('td', {}, s.timezone || 'UTC'),
      h('td', {}, (s.job && s.job.kind) || ''),
      h('td', { class: 'next-run', title: s.next_run_at || '' }, s.paused ? 'paused' : s.next_run_at ? until(s.next_run_at) : '–'),
      h('td', { class: 'last-run' }, lastRun(s)),
      h(
        'td',
        {},
        h(
          'button',
          {
            class: s.paused ? 'primary' : 'danger',
            onclick: async (e) => {
              e.target.disabled = true;
              try {
                await api(`/v1/schedules/${encodeURIComponent(s.name)}/${s.paused ? 'resume' : 'pause'}`, { method: 'POST' });
              } catch (err) {
                flash(`Could not change schedule ${s.name}: ${err.message}`, false);
              }
              rerender();
            },
          },
          s.paused ? 'Resume' : 'Pause',
        ),
      ),
    ),
  );
  return h(
    'section',
    { id: 'schedules' },
    h('h2', {}, 'Schedules'),
    schedules.length
      ? h(
          'table',
          {},
          h('thead', {}, h('tr', {}, ['name', 'cron / every', 'timezone', 'job', 'next run', 'last run', ''].map((t) => h('th', {}, t)))),
          h('tbody', {}, rows),
        )
      : h('p', { class: 'muted' }, 'No schedules. Create one with POST /v1/schedules or --schedules FILE.'),
  );
}

// ---- job list ---------------------------------------------------------------------------

function filtersFromHash() {
  const query = new URLSearchParams(location.hash.split('?')[1] || '');
  return {
    queue: query.get('queue') || '',
    kind: query.get('kind') || '',
    status: query.get('status') || '',
    text: query.get('text') || '',
    // KEY:VALUE each; the input takes several, separated by spaces or commas.
    tags: query.getAll('tag').flatMap((t) => t.split(/[\s,]+/)).filter((t) => t.includes(':')),
  };
}

function matches(filters, job) {
  if (filters.queue && job.queue !== filters.queue) return false;
  for (const tag of filters.tags) {
    const at = tag.indexOf(':');
    if (!job.tags || job.tags[tag.slice(0, at)] !== tag.slice(at + 1)) return false;
  }
  if (filters.kind && job.kind !== filters.kind) return false;
  if (filters.status && job.status !== filters.status) return false;
  if (filters.text) {
    const t = filters.text.toLowerCase();
    if (!String(job.id).includes(t) && !job.kind.toLowerCase().includes(t)) return false;
  }
  return true;
}

function jobList(root, filters) {
  const rows = new Map(); // job id -> { job, tr }
  const pending = new Map(); // job id -> job (changed since the last flush)
  let cursor = null;
  let flushTimer = null;
  const tbody = h('div', { id: 'jobs', class: 'list' });
  const more = h('button', { id: 'more', onclick: () => load() }, 'Older jobs');
  const count = h('span', { class: 'muted' });

  // Cells are built once per row and then only their text, classes and bar width change:
  // at 10,000 jobs/minute, rebuilding rows is what would keep the main thread busy.
  function render(job, tr) {
    if (!tr.children.length) {
      tr.append(
        h('span', {}, h('a', { href: `#/jobs/${job.id}` }, job.id)),
        h('span', { title: [job.kind, ...tagText(job.tags)].join(' ') }, job.kind, ...tagText(job.tags).map((t) => [' ', h('span', { class: 'tag' }, t)])),
        h('span', {}, job.queue),
        h('span', {}, h('span', { class: 'status' })),
        h('span', {}, h('span', { class: 'bar' }, h('i')), ' ', h('span', { class: 'muted' })),
        h('span', { class: 'num' }),
        h('span', { class: 'muted' }),
      );
    }
    const c = tr.children;
    tr.className = `job ${job.status}`;
    const badge = c[3].firstChild;
    badge.className = `status ${job.status}`;
    badge.textContent = job.status;
    const pct = job.progress == null ? 0 : job.progress;
    c[4].firstChild.firstChild.style.width = `${pct}%`;
    c[4].lastChild.textContent = job.message || (job.progress != null ? `${Math.round(pct)} %` : '');
    // Jobs first seen in the firehose do not know their max_attempts until they are loaded.
    c[5].textContent = job.max_attempts ? `${job.attempt}/${job.max_attempts}` : String(job.attempt);
    const hint = hintText(job.hint);
    c[6].className = hint ? 'hint' : 'muted';
    c[6].textContent = hint || new Date(job.updated_at).toLocaleTimeString();
    c[6].title = hint || job.updated_at;
  }

  function flush() {
    flushTimer = null;
    const fresh = [];
    lastChanges = pending.size;
    for (const job of pending.values()) {
      const row = rows.get(job.id);
      if (!matches(filters, job)) {
        // It left the filter (say, "running" and it finished): it leaves the list.
        if (row) row.tr.remove();
        rows.delete(job.id);
      } else if (row) {
        row.job = job;
        render(job, row.tr);
      } else {
        fresh.push(job);
      }
    }
    pending.clear();
    // New jobs go on top, newest first.
    fresh.sort((a, b) => Number(b.id) - Number(a.id));
    const frag = document.createDocumentFragment();
    for (const job of fresh) {
      const tr = h('div', { 'data-id': job.id, onclick: (e) => e.target.tagName !== 'A' && (location.hash = `#/jobs/${job.id}`) });
      render(job, tr);
      rows.set(job.id, { job, tr });
      frag.append(tr);
    }
    if (fresh.length) tbody.prepend(frag);
    while (rows.size > LIST_CAP) {
      const last = tbody.lastElementChild;
      rows.delete(last.dataset.id);
      last.remove();
      cursor = tbody.lastElementChild && tbody.lastElementChild.dataset.id;
      more.disabled = false;
    }
    count.textContent = `${rows.size} shown${rows.size >= LIST_CAP ? ` (capped at ${LIST_CAP}; filter to narrow)` : ''}`;
  }

  // Throttled, leading edge: a lone change shows at once, a burst at most every FLUSH_MS.
  let lastFlush = 0;
  let lastChanges = 0;
  function schedule(job) {
    pending.set(job.id, job);
    if (flushTimer) return;
    // Under a burst (many rows changed last time) frames come less often: each costs a
    // repaint of the list, whatever the number of rows it changes.
    const wait = Math.max(0, lastFlush + (lastChanges > 40 ? 3 * FLUSH_MS : FLUSH_MS) - performance.now());
    flushTimer = setTimeout(() => {
      lastFlush = performance.now();
      flush();
    }, wait);
  }

  function onEvent(e) {
    const id = e.job_id;
    const known = (pending.get(id) || (rows.get(id) || {}).job);
    if (known) {
      if (e.seq <= known.last_event_id) return;
      const job = { ...known, status: e.status, attempt: e.attempt, last_event_id: e.seq, updated_at: e.at, hint: null };
      if (e.type === 'progress') Object.assign(job, { progress: e.progress, message: e.message });
      if (e.type === 'retried' || e.type === 'started') Object.assign(job, { progress: null, message: null });
      if (e.type === 'retried' && e.max_attempts) job.max_attempts = e.max_attempts;
      if (e.type === 'succeeded') job.progress = 100;
      schedule(job);
      return;
    }
    // A new job, or (with a status filter) a job that just entered that status; any other
    // job is older than this page and not on it.
    const entered = filters.status && e.status === filters.status;
    if (!(e.type === 'queued' && e.seq === 1) && !entered) return;
    const job = { id, kind: e.kind, queue: e.queue, tags: e.tags, status: e.status, attempt: e.attempt, max_attempts: null, progress: e.type === 'progress' ? e.progress : null, message: e.type === 'progress' ? e.message : null, last_event_id: e.seq, updated_at: e.at };
    if (matches(filters, job)) schedule(job);
  }

  async function load() {
    more.disabled = true;
    const query = new URLSearchParams({ limit: '100' });
    for (const k of ['queue', 'kind', 'status']) if (filters[k]) query.set(k, filters[k]);
    for (const tag of filters.tags) query.append('tag', tag);
    if (cursor) query.set('cursor', cursor);
    try {
      if (filters.text && /^\d+$/.test(filters.text) && !cursor) {
        const job = await api(`/v1/jobs/${filters.text}`).catch(() => null);
        if (job && matches({ ...filters, text: '' }, job)) schedule(job);
      }
      const page = await api(`/v1/jobs?${query}`);
      const frag = document.createDocumentFragment();
      for (const job of page.jobs) {
        if (rows.has(job.id) || pending.has(job.id) || !matches(filters, job)) continue;
        const tr = h('div', { 'data-id': job.id, onclick: (e) => e.target.tagName !== 'A' && (location.hash = `#/jobs/${job.id}`) });
        render(job, tr);
        rows.set(job.id, { job, tr });
        frag.append(tr);
      }
      tbody.append(frag);
      cursor = page.next_cursor;
      more.disabled = !cursor;
      count.textContent = `${rows.size} shown`;
    } catch (e) {
      flash(`Could not load jobs: ${e.message}`, false);
      more.disabled = false;
    }
  }

  const input = (name, placeholder, value = filters[name]) =>
    h('input', { name, placeholder, value, size: 14 });
  const status = h('select', { name: 'status' }, h('option', { value: '' }, 'any status'), STATUSES.map((s) => h('option', { value: s, selected: filters.status === s }, s)));
  const form = h(
    'form',
    {
      class: 'filters',
      id: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        const q = new URLSearchParams();
        for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.value.trim());
        location.hash = `#/?${q}`;
      },
    },
    input('queue', 'queue'),
    input('kind', 'kind'),
    status,
    input('text', 'id or kind contains'),
    input('tag', 'tag key:value', filters.tags.join(' ')),
    h('button', { class: 'primary' }, 'Filter'),
    h('button', { type: 'button', onclick: () => (location.hash = '#/') }, 'Clear'),
    count,
  );
  status.addEventListener('change', () => form.requestSubmit());
  const submit = async (spec) => {
    try {
      return await api('/v1/jobs', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(spec) });
    } catch (err) {
      flash(`Could not submit: ${err.message}`, false);
      return null;
    }
  };
  const submitForm = h(
    'form',
    {
      class: 'filters',
      id: 'submit',
      onsubmit: async (e) => {
        e.preventDefault();
        const f = submitForm.elements;
        let spec;
        try {
          spec = { kind: f.kind.value.trim(), args: JSON.parse(f.args.value || '{}') };
        } catch (err) {
          flash(`Could not submit: args: ${err.message}`, false);
          return;
        }
        if (f.queue.value.trim()) spec.queue = f.queue.value.trim();
        await submit(spec);
      },
    },
    h('input', { name: 'kind', value: 'demo.steps', size: 12, 'aria-label': 'kind' }),
    h('input', { name: 'args', value: '{"steps": 10, "step_ms": 500}', size: 30, 'aria-label': 'args (JSON)' }),
    h('input', { name: 'queue', placeholder: 'queue (default)', size: 12 }),
    h('button', {}, 'Submit a job'),
    // One click each: a job with progress, and one that streams text as an LLM would (its
    // page shows the text arriving).
    h('button', { type: 'button', id: 'demo-steps', onclick: () => submit({ kind: 'demo.steps', args: { steps: 10, step_ms: 500 } }) }, 'Run demo.steps'),
    h(
      'button',
      {
        type: 'button',
        id: 'demo-tokens',
        onclick: async () => {
          const job = await submit({ kind: 'demo.tokens', args: { tokens: 200, token_ms: 20 } });
          if (job) location.hash = `#/jobs/${job.id}`;
        },
      },
      'Run demo.tokens',
    ),
  );
  root.replaceChildren(
    h(
      'section',
      {},
      h('h2', {}, 'Jobs'),
      submitForm,
      form,
      h('div', { class: 'list-head' }, ['id', 'kind', 'queue', 'status', 'progress', 'attempt', 'updated'].map((t) => h('span', {}, t))),
      tbody,
      h('p', {}, more),
    ),
  );
  firehose.listeners.add(onEvent);
  load();
  return () => {
    firehose.listeners.delete(onEvent);
    clearTimeout(flushTimer);
  };
}

// ---- job page ---------------------------------------------------------------------------

function jobPage(root, id) {
  let following = null;
  let lastId = null;
  let job = null;
  let refreshTimer = null;
  const events = [];
  const log = h('tbody', { id: 'log' });
  const details = h('div');
  const attempts = h('tbody');
  const panes = h('div', { id: 'output-panes' });
  const outputSection = h('section', { id: 'output', hidden: true }, h('h2', {}, 'Output (live)'), panes);
  const shown = new Map(); // stream -> { pre, length (characters of its text shown), attempt }
  let paint = null;

  async function refresh() {
    clearTimeout(refreshTimer);
    try {
      job = await api(`/v1/jobs/${id}`);
    } catch (e) {
      details.replaceChildren(h('p', {}, e.status === 404 ? `No job ${id}.` : `Could not load job ${id}: ${e.message}`));
      return;
    }
    renderDetails();
    // Subscribers and the hint change without events: a slow poll while the page is open.
    refreshTimer = setTimeout(refresh, 3000);
  }

  async function act(action) {
    try {
      job = await api(`/v1/jobs/${id}/${action}`, { method: 'POST' });
      renderDetails();
      if (action === 'retry') startFollowing();
    } catch (e) {
      flash(`Could not ${action} job ${id}: ${e.message}`, false);
    }
  }

  function renderDetails() {
    const curl = `curl -N ${location.origin}/v1/jobs/${id}/events${keyStore.get() ? ' -H "Authorization: Bearer $JOBCAST_KEY"' : ''}`;
    const pct = job.progress == null ? 0 : job.progress;
    const field = (name, value) => [h('dt', {}, name), h('dd', {}, value)];
    const parts = [
      h(
        'div',
        { class: `row ${job.status}` },
        h('h2', { style: 'margin:0;text-transform:none;font-size:18px;color:inherit' }, `Job ${job.id}`),
        statusBadge(job.status),
        h('span', { class: 'bar', style: 'width:240px' }, h('i', { id: 'job-bar', style: `width:${pct}%` })),
        h('span', { id: 'job-message' }, job.message || ''),
        h('button', { id: 'cancel', class: 'danger', disabled: TERMINAL.includes(job.status), onclick: () => act('cancel') }, 'Cancel'),
        h('button', { id: 'retry', class: 'primary', disabled: !['failed', 'cancelled'].includes(job.status), onclick: () => act('retry') }, 'Retry'),
      ),
      job.hint ? h('p', { class: 'hint' }, `⚠ ${hintText(job.hint)}`) : null,
      job.waiting_for && job.status === 'queued' ? h('p', { class: 'hint', id: 'waiting-for' }, `waiting for: ${waitingText(job.waiting_for)}`) : null,
      h(
        'dl',
        { class: 'grid' },
        field('kind', job.kind),
        field('queue', job.queue),
        field('attempt', `${job.attempt} of ${job.max_attempts}`),
        field('priority', job.priority),
        job.tags && Object.keys(job.tags).length
          ? field('tags', h('span', { id: 'tags' }, tagText(job.tags).map((t) => [h('a', { class: 'tag', href: `#/?tag=${encodeURIComponent(t)}` }, t), ' '])))
          : null,
        job.schedule ? field('schedule', `${job.schedule} (slot ${job.scheduled_for || '?'})`) : null,
        field('subscribers', h('span', { id: 'subscribers' }, subscribersText(job.subscribers))),
        field('created', `${job.created_at} (${ago(job.created_at)})`),
        field('run at', job.run_at),
        field('started', job.started_at || '–'),
        field('finished', job.finished_at || '–'),
      ),
      h('h3', {}, 'args'),
      h('pre', { id: 'args' }, JSON.stringify(job.args, null, 2)),
      job.result != null ? [h('h3', {}, 'result'), h('pre', { id: 'result' }, JSON.stringify(job.result, null, 2))] : null,
      job.error ? errorParts(job.error) : null,
      h('h3', {}, 'stream'),
      h('div', { class: 'row' }, h('code', { class: 'curl', id: 'curl' }, curl), h('button', { onclick: () => navigator.clipboard && navigator.clipboard.writeText(curl) }, 'Copy')),
    ];
    details.replaceChildren(...parts.flat(2).filter((part) => part != null));
  }

  // The count is published every few seconds by each serve process, so this page's own
  // stream may not be in it yet: while it follows the job, it counts itself.
  function subscribersText(n) {
    const self = following ? !following.closed : !TERMINAL.includes(job.status);
    if (!self) return String(n);
    return `${Math.max(1, n)} (this page included)`;
  }

  // The message first, then stderr (exec handlers), then whatever else the error carries.
  function errorParts(error) {
    const { message, stderr, ...rest } = error;
    return [
      h('h3', {}, 'error'),
      h('pre', { id: 'error' }, message || JSON.stringify(error)),
      stderr ? [h('h3', {}, 'stderr'), h('pre', { id: 'stderr' }, stderr)] : null,
      Object.keys(rest).length ? h('pre', { id: 'error-details' }, JSON.stringify(rest, null, 2)) : null,
    ];
  }

  function renderAttempts() {
    const byAttempt = new Map();
    for (const e of events) {
      if (e.type === 'started') byAttempt.set(e.data.attempt, { started: e.data.at });
      const a = byAttempt.get(e.data.attempt);
      if (a && ['retrying', 'succeeded', 'failed', 'cancelled', 'queued'].includes(e.type) && e.type !== 'started') {
        Object.assign(a, { ended: e.data.at, outcome: e.type, error: e.data.error && e.data.error.message });
      }
    }
    attempts.replaceChildren(
      ...[...byAttempt].map(([n, a]) =>
        h('tr', {}, h('td', { class: 'num' }, n), h('td', {}, a.started), h('td', {}, a.ended || 'running'), h('td', {}, a.outcome || ''), h('td', {}, a.error || '')),
      ),
    );
  }

  // One row for a run of output events of one stream: tokens would flood the log otherwise.
  function addOutputEvent(e) {
    const d = e.data;
    const last = log.lastElementChild;
    const bytes = new TextEncoder().encode(d.text).length;
    if (last && last.dataset.stream === d.stream && last.dataset.attempt === String(d.attempt)) {
      const count = Number(last.dataset.count) + 1;
      const total = Number(last.dataset.bytes) + bytes;
      Object.assign(last.dataset, { lastSeq: e.id, count, bytes: total });
      last.children[0].textContent = `${last.dataset.seq}–${e.id}`;
      last.children[4].textContent = `${d.stream}: ${count} appends, ${total} bytes`;
      return;
    }
    log.append(
      h(
        'tr',
        { 'data-seq': e.id, 'data-stream': d.stream, 'data-attempt': d.attempt, 'data-count': 1, 'data-bytes': bytes, class: 'output-row' },
        h('td', { class: 'num' }, e.id),
        h('td', {}, 'output'),
        h('td', {}, d.at),
        h('td', {}, `attempt ${d.attempt}`),
        h('td', {}, `${d.stream}: 1 append, ${bytes} bytes`),
      ),
    );
  }

  // A terminal-like pane per output stream, following its tail unless scrolled up.
  function paneFor(stream) {
    let pane = shown.get(stream);
    if (!pane) {
      const pre = h('pre', { class: 'term', 'data-stream': stream, id: `output-${stream}` });
      const raw = h('a', { class: 'muted', href: `/v1/jobs/${id}/output/${encodeURIComponent(stream)}`, target: '_blank' }, 'whole text');
      panes.append(h('div', { class: 'stream' }, h('div', { class: 'row' }, h('h3', {}, stream), keyStore.get() ? null : raw), pre));
      pane = { pre, length: 0, chars: 0 };
      shown.set(stream, pane);
      outputSection.hidden = false;
    }
    return pane;
  }

  function paintOutput() {
    paint = null;
    const text = following ? following.output : {};
    for (const [stream, pane] of shown) {
      const all = text[stream] || '';
      const pre = pane.pre;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      // A new attempt (the text started again), the first paint, or a burst past the limit:
      // the whole tail; else only what is new. Past twice the limit, only the tail stays.
      if (all.length < pane.length || pane.length === 0 || pane.chars + all.length - pane.length > 2 * OUTPUT_SHOWN) {
        pre.textContent = all.length > OUTPUT_SHOWN ? all.slice(-OUTPUT_SHOWN) : all;
        pane.chars = Math.min(all.length, OUTPUT_SHOWN);
      } else if (all.length > pane.length) {
        pre.append(all.slice(pane.length));
        pane.chars += all.length - pane.length;
      }
      pane.length = all.length;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
  }

  function onOutput(stream) {
    paneFor(stream);
    // At most one paint per frame, however fast the tokens come.
    if (!paint) paint = requestAnimationFrame(paintOutput);
  }

  function addEvent(e) {
    events.push(e);
    const d = e.data;
    if (e.type === 'output') return addOutputEvent(e);
    // A new attempt starts its streams again: the panes are emptied (and refilled).
    if (e.type === 'started' && shown.size && !paint) paint = requestAnimationFrame(paintOutput);
    const summary =
      e.type === 'progress'
        ? `${d.progress} % ${d.message || ''}`
        : d.error
          ? d.error.message
          : d.result !== undefined
            ? JSON.stringify(d.result)
            : d.data !== undefined
              ? JSON.stringify(d.data)
              : '';
    const box = log.closest('.logbox');
    const atBottom = box && box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    log.append(h('tr', { 'data-seq': e.id }, h('td', { class: 'num' }, e.id), h('td', {}, e.type), h('td', {}, d.at), h('td', {}, `attempt ${d.attempt}`), h('td', {}, summary)));
    if (atBottom) box.scrollTop = box.scrollHeight;
    if (e.type === 'progress') {
      const bar = $('#job-bar');
      if (bar) bar.style.width = `${d.progress}%`;
      const message = $('#job-message');
      if (message) message.textContent = d.message || '';
    } else {
      renderAttempts();
    }
  }

  function startFollowing() {
    if (following) following.close();
    following = follow(id, {
      lastEventId: lastId,
      headers: keyStore.get() ? authHeaders() : undefined,
      onEvent: (e) => {
        lastId = e.id;
        addEvent(e);
        if (e.type !== 'progress' && e.type !== 'output') refresh();
      },
      onOutput,
      onDone: () => refresh(),
      onError: (e) => {
        if (!e.retrying) flash(`Job stream: ${e.message}`, false);
      },
    });
  }

  root.replaceChildren(
    h('p', {}, h('a', { href: '#/' }, '← all jobs')),
    h('section', {}, details),
    outputSection,
    h('section', {}, h('h2', {}, 'Attempts'), h('table', {}, h('thead', {}, h('tr', {}, ['#', 'started', 'ended', 'outcome', 'error'].map((t) => h('th', {}, t)))), attempts)),
    h('section', {}, h('h2', {}, 'Events (live)'), h('div', { class: 'logbox' }, h('table', { class: 'log' }, h('thead', {}, h('tr', {}, ['id', 'type', 'at', 'attempt', ''].map((t) => h('th', {}, t)))), log))),
  );
  refresh().then(startFollowing);
  return () => {
    clearTimeout(refreshTimer);
    cancelAnimationFrame(paint);
    if (following) following.close();
  };
}

function waitingText(reason) {
  return (
    {
      concurrency_key: 'a free slot of its concurrency key',
      queue_concurrency: "a free slot of its queue's concurrency limit",
      queue_rate: "its queue's rate limit",
      paused: 'its queue to be resumed',
    }[reason] || reason
  );
}

// ---- routing ----------------------------------------------------------------------------

let teardown = () => {};
let overviewTimer = null;

function route() {
  teardown();
  clearInterval(overviewTimer);
  const match = location.hash.match(/^#\/jobs\/([^/?]+)/);
  if (match) {
    teardown = jobPage(view, decodeURIComponent(match[1]));
    return;
  }
  const overview = h('div', { id: 'overview' });
  const list = h('div');
  view.replaceChildren(overview, list);
  renderOverview(overview);
  overviewTimer = setInterval(() => renderOverview(overview), OVERVIEW_EVERY_MS);
  teardown = jobList(list, filtersFromHash());
}

window.addEventListener('hashchange', route);
firehose.open();
route();
