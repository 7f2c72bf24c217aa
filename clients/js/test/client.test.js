// client.js in Node (fetch transport) against a real `jobcast serve` and `work`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { follow } from '../client.js';
import * as h from './harness.js';

let server;
let worker;
before(async () => {
  server = await h.serve();
  worker = h.work(['--concurrency', '4']);
});
after(() => {
  server.kill();
  worker.kill();
});

test('follows a job to its end: every event once, progress in order, done with the status', async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 4, step_ms: 50 } });
  const seen = await h.followToEnd(follow, job.id, { base: server.url });
  assert.equal(seen.status, 'succeeded');
  assert.deepEqual(seen.progress, [25, 50, 75, 100]);
  h.assertContiguous(assert, seen.events);
  assert.deepEqual(seen.doneEvent.data.result, { steps: 4 });
  assert.equal(seen.following.lastEventId, seen.events.at(-1).id);
});

test('resumes across a killed serve with the last id: nothing missed, nothing repeated', async () => {
  const own = await h.serve();
  const listen = new URL(own.url).host;
  const job = await h.submit(own.url, { kind: 'demo.steps', args: { steps: 12, step_ms: 150 } });
  let killed = false;
  const done = h.followToEnd(follow, `${own.url}/v1/jobs/${job.id}/events`, {
    timeout: 30000,
    onEvent: (e) => {
      if (e.type === 'progress' && e.data.progress >= 25 && !killed) {
        killed = true;
        own.kill();
        // Another server on the same address, a moment later (the client backs off meanwhile).
        setTimeout(() => h.serve(listen).then((s) => (restarted = s)), 300);
      }
    },
  });
  let restarted;
  const seen = await done;
  assert.ok(killed, 'the server was killed mid-job');
  assert.ok(seen.errors.length >= 1 && seen.errors.every((e) => e.retrying), 'errors while the server was away');
  assert.equal(seen.status, 'succeeded');
  h.assertContiguous(assert, seen.events);
  assert.equal(seen.progress.length, 12);
  restarted.kill();
});

test('204 stops it: resuming at the end of a finished job makes no further request', async () => {
  const job = await h.submit(server.url, { kind: 'demo.echo', args: { x: 1 } });
  const first = await h.followToEnd(follow, job.id, { base: server.url });
  const counting = h.countingFetch();
  const seen = await h.followToEnd(follow, job.id, {
    base: server.url,
    fetch: counting,
    lastEventId: first.following.lastEventId,
  });
  assert.equal(seen.status, null);
  assert.deepEqual(seen.events, []);
  await h.sleep(1500);
  assert.equal(counting.calls, 1);
});

test('the terminal event closes it: no reconnect after the end', async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 2, step_ms: 30 } });
  const counting = h.countingFetch();
  const seen = await h.followToEnd(follow, job.id, { base: server.url, fetch: counting });
  assert.equal(seen.status, 'succeeded');
  await h.sleep(1500);
  assert.equal(counting.calls, 1);
});

test('a late joiner of a retried job goes through the old end to the new one', async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', queue: 'client-js-held', args: { steps: 2, step_ms: 30 } });
  assert.equal((await h.post(server.url, `/v1/jobs/${job.id}/cancel`)).status, 202);
  assert.equal((await h.post(server.url, `/v1/jobs/${job.id}/retry`)).status, 202);
  const following = h.followToEnd(follow, job.id, { base: server.url, timeout: 30000 });
  await h.sleep(300);
  const other = h.work(['--queues', 'client-js-held']);
  const seen = await following;
  other.kill();
  assert.deepEqual(
    seen.events.map((e) => e.type),
    ['queued', 'cancelled', 'retried', 'started', 'progress', 'progress', 'succeeded'],
  );
  assert.equal(seen.status, 'succeeded');
});

test('an unknown job is a fatal error, not an endless retry', async () => {
  const counting = h.countingFetch();
  const seen = await h.followToEnd(follow, '999999999', { base: server.url, fetch: counting });
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].status, 404);
  assert.equal(seen.errors[0].retrying, false);
  await h.sleep(1200);
  assert.equal(counting.calls, 1);
});

test('backs off while the server is away: attempts at about 0, 1, 3 s', async () => {
  const counting = h.countingFetch();
  const errors = [];
  // A port nobody listens on.
  const following = follow('1', { base: 'http://127.0.0.1:9', fetch: counting, onError: (e) => errors.push(e) });
  await h.sleep(3600);
  following.close();
  assert.ok(counting.calls >= 2 && counting.calls <= 4, `${counting.calls} attempts in 3.6 s`);
  assert.ok(errors.length === counting.calls && errors.every((e) => e.retrying));
  await h.sleep(1500);
  assert.ok(counting.calls <= 4, 'close() stops the retries');
});
