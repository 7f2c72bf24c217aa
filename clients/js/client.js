// jobcast client: follow one job's events until it ends (`follow`), or every job with some
// tags over one connection (`followTag`). An ES module with no dependencies, for browsers
// (EventSource) and Node 18+ (fetch with a small SSE parser). Served by every jobcast at
// /client.js; published from clients/js/.
//
//   import { follow } from '/client.js';
//   const f = follow(jobId, {
//     onProgress: (p, msg) => (bar.value = p),
//     onOutput: (stream, text) => (pre.textContent = f.text(stream)),
//     onDone: (status) => alert(status),
//   });
//
// The rules: resume with the last event id after any drop (whichever server answers), stop
// on 204 (nothing will ever follow) and after the terminal event, back off on errors, and
// treat a late joiner exactly like anyone else (the server replays what it missed).

const TERMINAL = ['succeeded', 'failed', 'cancelled'];
// `reset`: the server's database is no longer the history this stream was reading (an
// asynchronous failover lost events already delivered); its id restarts the stream (0 for a
// job: replayed from the start) and everything held is dropped.
const TYPES = ['queued', 'started', 'progress', 'output', 'retrying', 'retried', 'reset', ...TERMINAL];
const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30000;
// After a terminal event the server ends the response; a retried job's replay goes on
// instead, so "done" waits for the end of the response (or this long).
const DONE_GRACE_MS = 1000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const byteLength = (text) => encoder.encode(text).length;
const baseOf = (o) => o.base || (globalThis.location && globalThis.location.href) || undefined;
const root = (o) => (o.base || '').replace(/\/$/, '');

/** Follows a job: `target` is a job id or the URL of its events stream. */
export function follow(target, options = {}) {
  const o = options;
  const url = new URL(
    /^[A-Za-z0-9_-]{1,64}$/.test(String(target)) ? `${root(o)}/v1/jobs/${target}/events` : String(target),
    baseOf(o),
  );
  const output = texts(
    o,
    (id, stream, attempt) => new URL(url.pathname.replace(/events$/, `output/${stream}?attempt=${attempt}`), url),
    (stream, text, event) => o.onOutput && o.onOutput(stream, text, event),
  );
  // onDone waits for text still loading to fill a gap, so the text is whole by then.
  const onDone = (status, event) => output.settled().then(() => !handle.stopped && o.onDone && o.onDone(status, event));
  const handle = connect(url, { ...o, onDone }, (event, closed) => {
    output.feed(event);
    if (event.type === 'reset') return o.onReset && !closed() && o.onReset(event);
    if (o.onEvent && !closed()) o.onEvent(event);
    if (event.type === 'progress' && o.onProgress && !closed()) o.onProgress(event.data.progress, event.data.message, event);
  }, (event) => TERMINAL.includes(event.type), null, output.stop);
  Object.defineProperty(handle, 'output', { get: output.text });
  handle.text = (stream = 'output') => output.text()[stream] || '';
  return handle;
}

/**
 * Follows every job carrying all of `tags` (e.g. `{user: "42"}`) over one connection
 * (`GET /v1/events?tag=user:42`): the jobs that have them now (`GET /v1/jobs?tag=…`, when
 * allowed) and those created later, each kept up to date from its events.
 */
export function followTag(tags, options = {}) {
  const o = options;
  const url = new URL(`${root(o)}/v1/events`, baseOf(o));
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(tags)) query.append('tag', `${key}:${value}`);
  url.search = query;
  if (o.onOutput) url.searchParams.set('output', '1');
  const jobs = new Map();
  const outputs = new Map();
  const where = (id, stream, attempt) => new URL(`${root(o)}/v1/jobs/${id}/output/${stream}?attempt=${attempt}`, baseOf(o));

  function jobOf(id) {
    if (!jobs.has(id)) {
      const output = texts(o, where, (stream, text, event) => o.onOutput && o.onOutput(id, stream, text, event));
      outputs.set(id, output);
      jobs.set(id, Object.defineProperty({ id, last_event_id: 0 }, 'output', { enumerable: true, get: output.text, set() {} }));
    }
    return jobs.get(id);
  }

  // The jobs that already exist, read once the stream is open (nothing falls in between);
  // a listed job replaces what the events said only when it is newer. Read again on a
  // reconnect before any event came: without a cursor, the new stream starts from now.
  let listed = false;
  async function list() {
    if (o.list === false || (listed && handle.lastEventId != null)) return;
    listed = true;
    try {
      const limit = Number.isInteger(o.list) ? o.list : 100;
      const response = await (o.fetch || globalThis.fetch)(new URL(`${root(o)}/v1/jobs?${query}&limit=${limit}`, baseOf(o)), {
        headers: o.headers,
        cache: 'no-store',
      });
      if (!response.ok) return;
      for (const fresh of (await response.json()).jobs.reverse()) {
        const job = jobOf(fresh.id);
        if (fresh.last_event_id <= job.last_event_id || handle.stopped) continue;
        Object.assign(job, fresh);
        if (o.onJob) o.onJob(job);
      }
    } catch (_) {
      // A stream token opens streams only: no list, the events alone.
    }
  }

  const handle = connect(url, o, (event, closed) => {
    const d = event.data;
    if (event.type === 'reset') {
      // Another history: forget every job and list them again as they now are.
      jobs.clear();
      outputs.clear();
      listed = false;
      if (o.onReset && !closed()) o.onReset(event);
      list();
      return;
    }
    const job = jobOf(d.job_id);
    if (d.seq <= job.last_event_id) return;
    outputs.get(d.job_id).feed(event);
    Object.assign(job, { status: d.status, attempt: d.attempt, last_event_id: d.seq, updated_at: d.at });
    for (const k of ['kind', 'queue', 'tags', 'progress', 'message', 'result', 'error']) if (k in d) job[k] = d[k];
    if (event.type === 'started' || event.type === 'retried') job.progress = job.message = null;
    if (o.onEvent && !closed()) o.onEvent(event);
    if (event.type !== 'output' && o.onJob && !closed()) o.onJob(job);
  }, () => false, list, () => outputs.forEach((output) => output.stop()));
  handle.jobs = jobs;
  return handle;
}

// The text so far of each output stream of one job's current attempt, from its `output`
// events. A new attempt (`started`, or another `attempt`) starts every stream again; an
// event overlapping what is held (a replay) adds only what is new; a gap (joined midway,
// or resumed from a later id) is filled from GET …/output/NAME when that answers, else
// logged and skipped over.
function texts(o, where, emit) {
  let attempt;
  let text = {};
  let held = {}; // UTF-8 bytes of each stream's text
  let waiting = {}; // stream -> events held back while its text loads
  const loads = new Set();

  function add(event) {
    const { stream, offset, text: chunk } = event.data;
    const have = held[stream] || 0;
    const end = offset + byteLength(chunk);
    if (end <= have) return;
    held[stream] = end;
    const fresh = offset < have ? decoder.decode(encoder.encode(chunk).slice(have - offset)) : chunk;
    text[stream] = (text[stream] || '') + fresh;
    emit(stream, fresh, event);
  }

  function feed(event) {
    const d = event.data || {};
    if (event.type === 'reset') {
      attempt = undefined;
      text = {};
      held = {};
      waiting = {};
      return;
    }
    if (event.type === 'started' || d.attempt !== attempt) {
      attempt = d.attempt;
      text = {};
      held = {};
      waiting = {};
    }
    if (event.type !== 'output') return;
    const stream = d.stream;
    if (waiting[stream]) return waiting[stream].push(event);
    if (d.offset <= (held[stream] || 0)) return add(event);
    const queue = (waiting[stream] = [event]);
    const load = (o.fetch || globalThis.fetch)(where(d.job_id, stream, attempt), { headers: o.headers, cache: 'no-store' })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then(
        (all) => waiting[stream] === queue && add({ id: null, type: 'output', data: { ...d, offset: 0, text: all } }),
        (e) => console.warn(`jobcast: job ${d.job_id} ${stream}: bytes ${held[stream] || 0}-${d.offset} missing (${e.message})`),
      )
      .finally(() => {
        loads.delete(load);
        if (waiting[stream] !== queue) return;
        delete waiting[stream];
        queue.forEach(add);
      });
    loads.add(load);
  }

  return {
    feed,
    text: () => text,
    settled: () => Promise.all([...loads]).catch(() => {}),
    stop: () => (waiting = {}),
  };
}

// One SSE connection, resumed with the last event id until closed: `deliver(event, closed)`
// per event; `last(event)` says whether it ends the stream (then onDone); `opened()` after
// each successful open; `stopped()` when the user closes it.
function connect(url, o, deliver, last, opened, stopped) {
  const fetchFn = o.fetch || globalThis.fetch;
  const useEventSource =
    o.transport === 'eventsource' ||
    (!o.transport && typeof EventSource === 'function' && !o.headers);
  if (o.token) url.searchParams.set('token', o.token);
  let lastId = o.lastEventId != null ? String(o.lastEventId) : null;
  let closed = false;
  let backoff = FIRST_BACKOFF_MS;
  let timer = null;
  let doneTimer = null;
  let terminal = null;
  let source = null;
  let abort = null;
  const isClosed = () => closed;

  const streamUrl = () => {
    const u = new URL(url);
    if (lastId != null) u.searchParams.set('last_event_id', lastId);
    return u.toString();
  };

  function open() {
    backoff = FIRST_BACKOFF_MS;
    if (opened) opened();
  }

  function close() {
    closed = true;
    clearTimeout(timer);
    clearTimeout(doneTimer);
    if (source) source.close();
    if (abort) abort.abort();
    source = abort = null;
  }

  function finish() {
    if (closed) return;
    const event = terminal;
    close();
    if (o.onDone) o.onDone(event ? event.type : null, event);
  }

  function received(type, id, text) {
    if (closed) return;
    if (id) lastId = id;
    let data = text;
    try {
      data = JSON.parse(text);
    } catch (_) {
      // Not JSON: handed over as text.
    }
    const event = { id, type, data };
    backoff = FIRST_BACKOFF_MS;
    clearTimeout(doneTimer);
    terminal = last(event) ? event : null;
    deliver(event, isClosed);
    if (terminal && !closed) doneTimer = setTimeout(finish, DONE_GRACE_MS);
  }

  // The response ended or failed. `error` is null when it simply ended.
  function ended(error, fatal) {
    source = abort = null;
    if (closed) return;
    if (terminal) return finish();
    if (error && o.onError) o.onError(Object.assign(error, { retrying: !fatal }));
    if (fatal) return close();
    const wait = error ? backoff * (0.8 + Math.random() * 0.4) : 250;
    if (error) backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    timer = setTimeout(() => reconnect(false), wait);
  }

  function reconnect(preferEventSource) {
    if (closed) return;
    if (preferEventSource) openEventSource();
    else openFetch();
  }

  function openEventSource() {
    const es = (source = new EventSource(streamUrl(), { withCredentials: !!o.withCredentials }));
    const on = (e) => received(e.type, e.lastEventId, e.data);
    for (const type of [...TYPES, ...(o.eventTypes || [])]) es.addEventListener(type, on);
    es.onmessage = on;
    let wasOpen = false;
    es.onopen = () => {
      wasOpen = true;
      open();
    };
    es.onerror = () => {
      if (source !== es) return;
      es.close();
      source = null;
      if (closed) return;
      if (terminal) return finish();
      // A stream that was open and dropped: straight back. One that never opened (204, 4xx,
      // 5xx, server away): EventSource does not say why, so fetch asks, backing off on errors.
      timer = setTimeout(() => reconnect(wasOpen), wasOpen ? 250 : 0);
    };
  }

  async function openFetch() {
    const controller = (abort = new AbortController());
    let response;
    try {
      const headers = Object.assign({ Accept: 'text/event-stream' }, o.headers);
      if (lastId != null) headers['Last-Event-ID'] = lastId;
      response = await fetchFn(streamUrl(), { headers, signal: controller.signal, cache: 'no-store' });
    } catch (e) {
      if (abort === controller) ended(e instanceof Error ? e : new Error(String(e)), false);
      return;
    }
    if (abort !== controller) return;
    if (response.status === 204) return finish();
    if (response.status !== 200) {
      let detail = '';
      try {
        detail = (await response.json()).detail || '';
      } catch (_) {
        // No problem document.
      }
      const error = Object.assign(new Error(`HTTP ${response.status}${detail ? `: ${detail}` : ''}`), {
        status: response.status,
      });
      // Client errors will not fix themselves; the server being busy or away might.
      const fatal = response.status >= 400 && response.status < 500 && ![408, 429].includes(response.status);
      if (abort === controller) ended(error, fatal);
      return;
    }
    open();
    try {
      await readEvents(response.body, received, () => abort === controller);
      if (abort === controller) ended(null, false);
    } catch (e) {
      if (abort === controller) ended(e instanceof Error ? e : new Error(String(e)), false);
    }
  }

  reconnect(useEventSource);
  const handle = {
    stopped: false,
    close() {
      handle.stopped = true;
      close();
      stopped();
    },
    get closed() {
      return closed;
    },
    get lastEventId() {
      return lastId;
    },
  };
  return handle;
}

/**
 * Reads an SSE body (a fetch Response's ReadableStream) and calls `onEvent(type, id, data)`
 * for each event, per the WHATWG "event stream interpretation", while `current()` holds.
 */
export async function readEvents(body, onEvent, current = () => true) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let id = null;
  let type = '';
  let data = [];
  while (current()) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (data.length) onEvent(type || 'message', id, data.join('\n'));
        type = '';
        data = [];
        continue;
      }
      if (line[0] === ':') continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') type = value;
      else if (field === 'id') id = value;
    }
  }
  reader.cancel().catch(() => {});
}
