// client.js's output text and followTag against a scripted SSE server: the cases a real
// server should never produce (overlaps, gaps) and the exact requests the client makes.
// No database needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { follow, followTag } from '../client.js';

/** An HTTP server whose every request goes to `handle(req, res)`; records requests. */
async function scripted(handle) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ url: req.url, lastEventId: req.headers['last-event-id'] });
    handle(req, res, requests.length);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, requests, close: () => (server.closeAllConnections(), server.close()) };
}

const frame = (id, type, data) => `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
const output = (seq, attempt, offset, text, stream = 'output') =>
  frame(seq, 'output', { job_id: '7', seq, status: 'running', attempt, stream, offset, text });
const sse = (res, body, end = true) => {
  if (!res.headersSent) res.writeHead(200, { 'Content-Type': 'text/event-stream' });
  res.write('retry: 1000\n\n' + body);
  if (end) res.end();
};

/** follow() until onDone; resolves with the chunks onOutput saw and the handle. */
function followed(url, options = {}) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const timer = setTimeout(() => reject(new Error(`not done; chunks ${JSON.stringify(chunks)}`)), 5000);
    const following = follow('7', {
      base: url,
      ...options,
      onOutput: (stream, text, event) => chunks.push([stream, text, event.id]),
      onDone: (status) => {
        clearTimeout(timer);
        resolve({ chunks, following, status });
      },
    });
  });
}

test('output events become the text so far per stream; onOutput gets each new piece', async () => {
  const server = await scripted((req, res) =>
    sse(
      res,
      frame(1, 'started', { job_id: '7', seq: 1, status: 'running', attempt: 1 }) +
        output(2, 1, 0, 'tok1 ') +
        output(3, 1, 0, 'compiling', 'log') +
        output(4, 1, 5, 'tök2 ') +
        output(5, 1, 11, 'tok3 ') +
        frame(6, 'succeeded', { job_id: '7', seq: 6, status: 'succeeded', attempt: 1, result: {} }),
    ),
  );
  const { chunks, following, status } = await followed(server.url);
  assert.equal(status, 'succeeded');
  assert.equal(following.text(), 'tok1 tök2 tok3 ');
  assert.equal(following.text('log'), 'compiling');
  assert.equal(following.text('nothing'), '');
  assert.deepEqual(following.output, { output: 'tok1 tök2 tok3 ', log: 'compiling' });
  assert.deepEqual(chunks, [
    ['output', 'tok1 ', '2'],
    ['log', 'compiling', '3'],
    ['output', 'tök2 ', '4'],
    ['output', 'tok3 ', '5'],
  ]);
  server.close();
});

test('an event overlapping the text held adds only what is new, by UTF-8 bytes', async () => {
  const server = await scripted((req, res) =>
    sse(
      res,
      output(1, 1, 0, 'héllo ') + // 7 bytes
        output(2, 1, 0, 'héllo ') + // a replay: nothing new
        output(3, 1, 3, 'llo wörld') + // bytes 3..13: only "wörld" is new
        frame(4, 'succeeded', { job_id: '7', seq: 4, status: 'succeeded', attempt: 1 }),
    ),
  );
  const { chunks, following } = await followed(server.url);
  assert.equal(following.text(), 'héllo wörld');
  assert.deepEqual(chunks.map((c) => c[1]), ['héllo ', 'wörld']);
  server.close();
});

test('a new attempt starts the text again: on started, and on another attempt number', async () => {
  const server = await scripted((req, res) =>
    sse(
      res,
      output(1, 1, 0, 'first try ') +
        frame(2, 'retrying', { job_id: '7', seq: 2, status: 'queued', attempt: 1, error: { message: 'x' } }) +
        frame(3, 'started', { job_id: '7', seq: 3, status: 'running', attempt: 2 }) +
        output(4, 2, 0, 'second ') +
        output(5, 3, 0, 'third') + // attempt 3 without its started event: still a fresh start
        frame(6, 'succeeded', { job_id: '7', seq: 6, status: 'succeeded', attempt: 3 }),
    ),
  );
  const { following } = await followed(server.url);
  assert.equal(following.text(), 'third');
  assert.deepEqual(Object.keys(following.output), ['output']);
  server.close();
});

test('the text is reset before onEvent sees started', async () => {
  let handle;
  const texts = [];
  const server = await scripted((req, res) =>
    sse(
      res,
      output(1, 1, 0, 'old ') +
        frame(2, 'started', { job_id: '7', seq: 2, status: 'running', attempt: 2 }) +
        output(3, 2, 0, 'new') +
        frame(4, 'succeeded', { job_id: '7', seq: 4, status: 'succeeded', attempt: 2 }),
    ),
  );
  await new Promise((resolve) => {
    handle = follow('7', {
      base: server.url,
      onEvent: (e) => texts.push(`${e.type}:${handle.text()}`),
      onDone: resolve,
    });
  });
  assert.deepEqual(texts, ['output:old ', 'started:', 'output:new', 'succeeded:new']);
  server.close();
});

test('a gap is filled from GET /v1/jobs/ID/output/NAME of that attempt, then the events go on', async () => {
  const server = await scripted((req, res) => {
    if (req.url.startsWith('/v1/jobs/7/output/output')) {
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
      return res.end('tok1 tok2 tok3 '); // further than the event that showed the gap
    }
    // Resumed from seq 3: the events holding "tok1 tok2 " are behind the resume point.
    sse(
      res,
      output(4, 2, 10, 'tok3 ') +
        output(5, 2, 15, 'tok4 ') +
        frame(6, 'succeeded', { job_id: '7', seq: 6, status: 'succeeded', attempt: 2 }),
    );
  });
  const { chunks, following } = await followed(server.url, { lastEventId: 3 });
  assert.equal(following.text(), 'tok1 tok2 tok3 tok4 ');
  assert.deepEqual(chunks.map((c) => c[1]), ['tok1 tok2 tok3 ', 'tok4 ']);
  assert.equal(chunks[0][2], null, 'the loaded text comes with a made-up event (id null)');
  const load = server.requests.find((r) => r.url.includes('/output/'));
  assert.equal(load.url, '/v1/jobs/7/output/output?attempt=2');
  server.close();
});

test('a gap that cannot be filled is logged and skipped over', async () => {
  const warnings = [];
  const warn = console.warn;
  console.warn = (m) => warnings.push(m);
  const server = await scripted((req, res) => {
    if (req.url.includes('/output/')) {
      res.writeHead(401, { 'Content-Type': 'application/problem+json' });
      return res.end('{"status":401}');
    }
    sse(
      res,
      output(1, 1, 0, 'a') +
        output(3, 1, 5, 'f') + // bytes 1..5 never came
        output(4, 1, 6, 'g') +
        frame(5, 'succeeded', { job_id: '7', seq: 5, status: 'succeeded', attempt: 1 }),
    );
  });
  try {
    const { following } = await followed(server.url);
    assert.equal(following.text(), 'afg');
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /job 7 output: bytes 1-5 missing/);
  } finally {
    console.warn = warn;
    server.close();
  }
});

test('followTag: one stream with each tag, output=1 with onOutput, jobs listed then kept up to date', async () => {
  let streams = 0;
  let listed;
  const listing = new Promise((r) => (listed = r));
  const server = await scripted(async (req, res) => {
    if (req.url.startsWith('/v1/jobs?')) {
      setTimeout(listed, 50);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({
        jobs: [
          { id: '11', kind: 'demo.tokens', status: 'running', attempt: 1, last_event_id: 4, tags: { user: '42' }, max_attempts: 3 },
          { id: '10', kind: 'demo.echo', status: 'succeeded', attempt: 1, last_event_id: 3, tags: { user: '42' } },
        ],
        next_cursor: null,
      }));
    }
    streams += 1;
    const tags = { user: '42', project: 'apollo' };
    if (streams === 1) {
      // The events come after the listing (which the client asks for once the stream is open).
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write(': open\n\n');
      await listing;
      // Dropped after two events; the client resumes with the cursor of the last one.
      return sse(
        res,
        frame('c1', 'progress', { job_id: '11', seq: 5, status: 'running', attempt: 1, tags, progress: 50, message: 'half' }) +
          frame('c2', 'output', { job_id: '11', seq: 6, status: 'running', attempt: 1, tags, stream: 'output', offset: 0, text: 'tok1 ' }),
      );
    }
    sse(
      res,
      frame('c3', 'queued', { job_id: '12', seq: 1, status: 'queued', attempt: 0, kind: 'demo.echo', queue: 'default', tags }) +
        frame('c4', 'succeeded', { job_id: '11', seq: 7, status: 'succeeded', attempt: 1, tags, result: { tokens: 1 } }),
      false,
    );
  });
  const changes = [];
  const outputs = [];
  const handle = followTag(
    { user: '42', project: 'apollo' },
    {
      base: server.url,
      token: 'TOKEN',
      onJob: (job) => changes.push(`${job.id}:${job.status}:${job.progress ?? ''}`),
      onOutput: (id, stream, text) => outputs.push([id, stream, text]),
    },
  );
  for (let i = 0; i < 100 && changes.length < 5; i++) await new Promise((r) => setTimeout(r, 20));
  handle.close();
  server.close();
  const stream = server.requests.filter((r) => r.url.startsWith('/v1/events'));
  const first = new URL(stream[0].url, server.url).searchParams;
  assert.deepEqual(first.getAll('tag'), ['user:42', 'project:apollo']);
  assert.equal(first.get('output'), '1');
  assert.equal(first.get('token'), 'TOKEN');
  assert.equal(new URL(stream[1].url, server.url).searchParams.get('last_event_id'), 'c2');
  assert.equal(stream[1].lastEventId, 'c2');
  const list = server.requests.filter((r) => r.url.startsWith('/v1/jobs?'));
  assert.equal(list.length, 1, 'listed once, not on every reconnect');
  assert.deepEqual(new URL(list[0].url, server.url).searchParams.getAll('tag'), ['user:42', 'project:apollo']);
  // The listed jobs come oldest first, once; events newer than the listing update them.
  assert.deepEqual(changes.slice().sort(), ['10:succeeded:', '11:running:', '11:running:50', '11:succeeded:50', '12:queued:'].sort());
  assert.deepEqual(outputs, [['11', 'output', 'tok1 ']]);
  const job = handle.jobs.get('11');
  assert.equal(job.status, 'succeeded');
  assert.deepEqual(job.result, { tokens: 1 });
  assert.equal(job.max_attempts, 3, 'fields of the listed job stay');
  assert.deepEqual(job.output, { output: 'tok1 ' });
  assert.equal(handle.jobs.get('12').kind, 'demo.echo');
});

test('followTag without onOutput does not ask for output events; an event older than the listing is skipped', async () => {
  let listed;
  const listing = new Promise((r) => (listed = r));
  const server = await scripted(async (req, res) => {
    if (req.url.startsWith('/v1/jobs?')) {
      setTimeout(listed, 50);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({ jobs: [{ id: '20', status: 'running', attempt: 1, last_event_id: 9, progress: 90 }], next_cursor: null }));
    }
    // Held back until the listing is in: an event the listing already reflects, then a new one.
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write(': open\n\n');
    await listing;
    res.write(
      frame('x1', 'progress', { job_id: '20', seq: 9, status: 'running', attempt: 1, progress: 80 }) +
        frame('x2', 'progress', { job_id: '20', seq: 10, status: 'running', attempt: 1, progress: 100 }),
    );
  });
  const changes = [];
  const handle = followTag({ user: '1' }, { base: server.url, onJob: (job) => changes.push(job.progress) });
  for (let i = 0; i < 100 && changes.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  handle.close();
  server.close();
  assert.equal(new URL(server.requests[0].url, server.url).searchParams.get('output'), null);
  assert.deepEqual(changes, [90, 100]);
});

test('followTag lists again after a reconnect that had no cursor yet (the new stream starts from now)', async () => {
  let streams = 0;
  const server = await scripted((req, res) => {
    if (req.url.startsWith('/v1/jobs?')) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end('{"jobs": [], "next_cursor": null}');
    }
    streams += 1;
    if (streams === 1) return sse(res, ''); // open, then dropped before any event
    if (streams === 2) return sse(res, frame('k1', 'queued', { job_id: '30', seq: 1, status: 'queued', attempt: 0 }));
    sse(res, '', false);
  });
  const handle = followTag({ user: '1' }, { base: server.url });
  for (let i = 0; i < 100 && streams < 3; i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 100));
  handle.close();
  server.close();
  const kinds = server.requests.map((r) => (r.url.startsWith('/v1/jobs?') ? 'list' : r.lastEventId ? `stream after ${r.lastEventId}` : 'stream'));
  assert.deepEqual(kinds, ['stream', 'list', 'stream', 'list', 'stream after k1']);
});

test('a reset drops the text and the stream starts again from the reset id (the new history)', async () => {
  const server = await scripted((req, res, n) => {
    if (n === 1) {
      // The history this client read, then the server's reset (an asynchronous failover).
      return sse(
        res,
        frame(1, 'started', { job_id: '7', seq: 1, status: 'running', attempt: 1 }) +
          output(2, 1, 0, 'old text ') +
          `id: 0\nevent: reset\ndata: ${JSON.stringify({ type: 'reset', last_event_id: '2' })}\n\n`,
      );
    }
    // The new history, from the start.
    sse(
      res,
      frame(1, 'started', { job_id: '7', seq: 1, status: 'running', attempt: 1 }) +
        output(2, 1, 0, 'new ') +
        output(3, 1, 4, 'text') +
        frame(4, 'succeeded', { job_id: '7', seq: 4, status: 'succeeded', attempt: 1, result: {} }),
    );
  });
  const resets = [];
  const { following, status } = await followed(server.url, { transport: 'fetch', onReset: (e) => resets.push(e) });
  server.close();
  assert.equal(status, 'succeeded');
  assert.equal(resets.length, 1);
  assert.equal(following.text(), 'new text');
  assert.equal(server.requests[1].lastEventId, '0', 'reconnected from the reset id');
});
