// jobcast client: follow one job's events until it ends. An ES module with no dependencies,
// for browsers (EventSource) and Node 18+ (fetch with a small SSE parser). Served by every
// jobcast at /client.js; published from clients/js/.
//
//   import { follow } from '/client.js';
//   follow(jobId, { onProgress: (p, msg) => (bar.value = p), onDone: (status) => alert(status) });
//
// The rules: resume with the last event id after any drop (whichever server answers), stop
// on 204 (nothing will ever follow) and after the terminal event, back off on errors, and
// treat a late joiner exactly like anyone else (the server replays what it missed).

const TERMINAL = ['succeeded', 'failed', 'cancelled'];
const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30000;
// After a terminal event the server ends the response; a retried job's replay goes on
// instead, so "done" waits for the end of the response (or this long).
const DONE_GRACE_MS = 1000;

/** Follows a job: `target` is a job id or the URL of its events stream. */
export function follow(target, options = {}) {
  const o = options;
  const fetchFn = o.fetch || globalThis.fetch;
  const base = o.base || (globalThis.location && globalThis.location.href) || undefined;
  const url = new URL(
    /^[A-Za-z0-9_-]{1,64}$/.test(String(target))
      ? `${(o.base || '').replace(/\/$/, '')}/v1/jobs/${target}/events`
      : String(target),
    base,
  );
  if (o.token) url.searchParams.set('token', o.token);
  const useEventSource =
    o.transport === 'eventsource' ||
    (!o.transport && typeof EventSource === 'function' && !o.headers);
  let lastId = o.lastEventId != null ? String(o.lastEventId) : null;
  let closed = false;
  let backoff = FIRST_BACKOFF_MS;
  let timer = null;
  let doneTimer = null;
  let terminal = null;
  let source = null;
  let abort = null;

  const streamUrl = () => {
    const u = new URL(url);
    if (lastId != null) u.searchParams.set('last_event_id', lastId);
    return u.toString();
  };

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

  function deliver(type, id, text) {
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
    terminal = TERMINAL.includes(type) ? event : null;
    if (o.onEvent) o.onEvent(event);
    if (type === 'progress' && o.onProgress && !closed) o.onProgress(data.progress, data.message, event);
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
    timer = setTimeout(() => connect(false), wait);
  }

  function connect(preferEventSource) {
    if (closed) return;
    if (preferEventSource) openEventSource();
    else openFetch();
  }

  function openEventSource() {
    const es = (source = new EventSource(streamUrl(), { withCredentials: !!o.withCredentials }));
    const on = (e) => deliver(e.type, e.lastEventId, e.data);
    for (const type of ['queued', 'started', 'progress', 'retrying', 'retried', ...TERMINAL, ...(o.eventTypes || [])]) {
      es.addEventListener(type, on);
    }
    es.onmessage = on;
    let opened = false;
    es.onopen = () => {
      opened = true;
    };
    es.onerror = () => {
      if (source !== es) return;
      es.close();
      source = null;
      if (closed) return;
      if (terminal) return finish();
      // A stream that was open and dropped: straight back. One that never opened (204, 4xx,
      // 5xx, server away): EventSource does not say why, so fetch asks, backing off on errors.
      timer = setTimeout(() => connect(opened), opened ? 250 : 0);
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
    try {
      await readEvents(response.body, deliver, () => abort === controller);
      if (abort === controller) ended(null, false);
    } catch (e) {
      if (abort === controller) ended(e instanceof Error ? e : new Error(String(e)), false);
    }
  }

  connect(useEventSource);
  return {
    close,
    get lastEventId() {
      return lastId;
    },
  };
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
