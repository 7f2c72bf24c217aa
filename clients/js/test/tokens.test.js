// client.js's output text against a real `jobcast serve` and `work`: demo.tokens appends
// "tok1 ", "tok2 ", … to an output stream, as an LLM would (API.md, "Output streams").
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { follow } from '../client.js';
import * as h from './harness.js';

let server;
let worker;
before(async () => {
  server = await h.serve();
  worker = h.work(['--concurrency', '4', '--queues', 'default,client-js-tokens']);
});
after(() => {
  server.kill();
  worker.kill();
});

const tokens = (n, from = 1) => Array.from({ length: n }, (_, i) => `tok${from + i} `).join('');

/** followToEnd plus what onOutput saw: [stream, text, event] per call. */
async function followOutput(target, options = {}) {
  const chunks = [];
  const seen = await h.followToEnd(follow, target, {
    base: server.url,
    ...options,
    onOutput: (stream, text, event) => {
      chunks.push([stream, text, event]);
      if (options.onOutput) options.onOutput(stream, text, event);
    },
  });
  return Object.assign(seen, { chunks });
}

test("a demo.tokens job's text arrives through onOutput, whole and in order", async () => {
  const job = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 40, token_ms: 10 } });
  const seen = await followOutput(job.id);
  assert.equal(seen.status, 'succeeded');
  const expected = tokens(40);
  assert.equal(seen.following.text(), expected);
  assert.deepEqual(seen.following.output, { output: expected });
  assert.equal(seen.chunks.map((c) => c[1]).join(''), expected);
  assert.ok(seen.chunks.every((c) => c[0] === 'output' && c[2].type === 'output'));
  // Offsets: gapless, from 0, in bytes.
  const outputs = seen.events.filter((e) => e.type === 'output');
  let offset = 0;
  for (const e of outputs) {
    assert.equal(e.data.offset, offset);
    assert.equal(e.data.attempt, 1);
    offset += Buffer.byteLength(e.data.text);
  }
  assert.ok(outputs.length >= 2, `${outputs.length} output events for 40 tokens over 400 ms`);
  assert.deepEqual(seen.doneEvent.data.result, { tokens: 40, bytes: Buffer.byteLength(expected) });
  // The whole text is also one GET away.
  const whole = await fetch(`${server.url}/v1/jobs/${job.id}/output/output`);
  assert.equal(whole.status, 200);
  assert.match(whole.headers.get('content-type'), /^text\/plain/);
  assert.equal(await whole.text(), expected);
});

test('a named stream: text(name) holds it, the default stream stays empty', async () => {
  const job = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 5, token_ms: 0, stream: 'answer' } });
  const seen = await followOutput(job.id);
  assert.equal(seen.status, 'succeeded');
  assert.equal(seen.following.text('answer'), tokens(5));
  assert.equal(seen.following.text(), '');
  assert.equal((await fetch(`${server.url}/v1/jobs/${job.id}/output/output`)).status, 404);
});

test('a late joiner gets the text from the start; one resuming past it has it filled in', async () => {
  const job = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 60, token_ms: 15 } });
  // Leave after a few output events, then come back from there.
  let lastId;
  const first = follow(job.id, { base: server.url });
  for (let i = 0; i < 200 && (first.text().match(/tok/g) || []).length < 10; i++) await h.sleep(10);
  first.close();
  lastId = first.lastEventId;
  assert.ok(first.text().startsWith('tok1 tok2 '), first.text());
  const resumed = await followOutput(job.id, { lastEventId: lastId });
  const late = await followOutput(job.id);
  assert.equal(resumed.status, 'succeeded');
  assert.equal(resumed.following.text(), tokens(60), 'the text before the resume point was loaded');
  assert.equal(resumed.chunks[0][2].id, null, 'loaded, not replayed');
  assert.equal(late.following.text(), tokens(60));
});

test("a retried job's text starts again with the new attempt", async () => {
  const job = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 80, token_ms: 20 } });
  const first = follow(job.id, { base: server.url });
  for (let i = 0; i < 300 && (first.text().match(/tok/g) || []).length < 10; i++) await h.sleep(10);
  first.close();
  assert.equal((await h.post(server.url, `/v1/jobs/${job.id}/cancel`)).status, 202);
  for (let i = 0; i < 200 && (await h.job(server.url, job.id)).status !== 'cancelled'; i++) await h.sleep(20);
  assert.equal((await h.post(server.url, `/v1/jobs/${job.id}/retry`)).status, 202);
  // From the start: attempt 1's text (cut short), then attempt 2's from offset 0.
  const seen = await followOutput(job.id, { timeout: 30000 });
  assert.equal(seen.status, 'succeeded');
  assert.equal(seen.following.text(), tokens(80));
  const starts = seen.chunks.filter((c) => c[2].data.offset === 0).map((c) => c[2].data.attempt);
  assert.deepEqual(starts, [1, 2]);
  assert.equal(await (await fetch(`${server.url}/v1/jobs/${job.id}/output/output`)).text(), tokens(80));
  const earlier = await (await fetch(`${server.url}/v1/jobs/${job.id}/output/output?attempt=1`)).text();
  assert.ok(earlier.length > 0 && tokens(80).startsWith(earlier) && earlier !== tokens(80), earlier);
});
