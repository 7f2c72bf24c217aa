// followTag against a real `jobcast serve` and `work`: every job with some tags over one
// stream (API.md, "Following many jobs at once: tags").
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { followTag } from '../client.js';
import * as h from './harness.js';

let server;
let worker;
before(async () => {
  server = await h.serve();
  worker = h.work(['--concurrency', '8']);
});
after(() => {
  server.kill();
  worker.kill();
});

/** Waits until `condition()` holds (or throws after `ms`, saying `what`). */
async function until(condition, what, ms = 15000) {
  for (const end = Date.now() + ms; Date.now() < end; await h.sleep(20)) if (condition()) return;
  throw new Error(`timed out: ${typeof what === 'function' ? what() : what}`);
}

// Tags unique to one test run, so jobs of earlier runs on the same database do not count.
const run = `${process.pid}-${Date.now()}`;

test('follows every job with the tag over one stream: listed ones, new ones, and no other', async () => {
  const user = `u-${run}`;
  const old = await h.submit(server.url, { kind: 'demo.echo', args: { n: 0 }, tags: { user } });
  for (let i = 0; i < 200 && (await h.job(server.url, old.id)).status !== 'succeeded'; i++) await h.sleep(20);
  const jobs = new Map();
  const events = [];
  const texts = {};
  const counting = h.countingFetch();
  const following = followTag(
    { user },
    {
      base: server.url,
      fetch: counting,
      onJob: (job) => jobs.set(job.id, { ...job }),
      onEvent: (e) => events.push(e),
      onOutput: (id, stream, text) => (texts[id] = (texts[id] || '') + text),
    },
  );
  await until(() => jobs.has(old.id), () => `the existing job listed; jobs ${[...jobs.keys()]}`);
  assert.equal(jobs.get(old.id).status, 'succeeded');
  const steps = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 3, step_ms: 50 }, tags: { user, project: 'apollo' } });
  const tokens = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 20, token_ms: 10 }, tags: { user } });
  const other = await h.submit(server.url, { kind: 'demo.echo', tags: { user: `${user}-not` } });
  const untagged = await h.submit(server.url, { kind: 'demo.echo' });
  await until(
    () => jobs.get(steps.id)?.status === 'succeeded' && jobs.get(tokens.id)?.status === 'succeeded',
    () => `both new jobs done: ${JSON.stringify([...jobs.values()])}`,
  );
  await h.sleep(300);
  following.close();
  assert.equal(jobs.has(other.id), false, 'a job with another value');
  assert.equal(jobs.has(untagged.id), false, 'a job without tags');
  assert.ok(events.every((e) => e.data.tags && e.data.tags.user === user), 'every event carries the tags');
  const done = jobs.get(steps.id);
  assert.deepEqual(done.tags, { user, project: 'apollo' });
  assert.equal(done.kind, 'demo.steps');
  assert.equal(done.progress, 100);
  assert.deepEqual(done.result, { steps: 3 });
  assert.equal(texts[tokens.id], Array.from({ length: 20 }, (_, i) => `tok${i + 1} `).join(''));
  assert.equal(following.jobs.get(tokens.id).output.output, texts[tokens.id]);
  // One stream request (and one listing): not one per job.
  const calls = counting.calls;
  assert.ok(calls <= 2, `${calls} requests`);
});

test('several tags must all match; GET /v1/jobs?tag= lists the same jobs', async () => {
  const user = `m-${run}`;
  const seen = new Map();
  const following = followTag({ user, project: 'apollo' }, { base: server.url, onJob: (job) => seen.set(job.id, job.status) });
  const both = await h.submit(server.url, { kind: 'demo.echo', tags: { user, project: 'apollo' } });
  const one = await h.submit(server.url, { kind: 'demo.echo', tags: { user } });
  await until(() => seen.get(both.id) === 'succeeded', () => `seen ${JSON.stringify([...seen])}`);
  await h.sleep(300);
  following.close();
  assert.equal(seen.has(one.id), false);
  const listed = await (await fetch(`${server.url}/v1/jobs?tag=user:${user}&tag=project:apollo`)).json();
  assert.deepEqual(listed.jobs.map((j) => j.id), [both.id]);
  assert.deepEqual(listed.jobs[0].tags, { user, project: 'apollo' });
  const byUser = await (await fetch(`${server.url}/v1/jobs?tag=user:${user}`)).json();
  assert.deepEqual(byUser.jobs.map((j) => j.id).sort(), [both.id, one.id].sort());
});

test('resumes across a killed serve with the cursor: jobs created meanwhile are not missed', async () => {
  const user = `r-${run}`;
  const own = await h.serve();
  const listen = new URL(own.url).host;
  const jobs = new Map();
  const errors = [];
  const events = [];
  const counting = h.countingFetch();
  const following = followTag(
    { user },
    { base: own.url, fetch: counting, onJob: (job) => jobs.set(job.id, job.status), onEvent: (e) => events.push(e), onError: (e) => errors.push(e) },
  );
  // The listing is asked for once the stream is open: from then on, events come through it.
  await until(() => counting.calls >= 2, 'the stream open');
  const first = await h.submit(server.url, { kind: 'demo.echo', tags: { user } });
  await until(() => events.some((e) => e.data.job_id === first.id && e.type === 'succeeded'), 'the first job, through the stream');
  const cursor = following.lastEventId;
  assert.ok(cursor, 'a cursor to resume from');
  own.kill();
  const during = [];
  for (let i = 0; i < 3; i++) during.push(await h.submit(server.url, { kind: 'demo.echo', args: { i }, tags: { user } }));
  await h.sleep(300);
  const again = await h.serve(listen);
  try {
    for (const job of during) await until(() => jobs.get(job.id) === 'succeeded', () => `job ${job.id}: ${jobs.get(job.id)}`, 20000);
    assert.ok(errors.length >= 1 && errors.every((e) => e.retrying), 'errors while the server was away, each retried');
    // Through the resumed stream, not a second listing: every event of those jobs, from queued.
    for (const job of during) assert.deepEqual(events.filter((e) => e.data.job_id === job.id).map((e) => e.type), ['queued', 'started', 'succeeded']);
  } finally {
    following.close();
    again.kill();
  }
});

test('with auth on, a tag token opens the tag stream (no listing without a key); other tags are refused, once', async () => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobcast-keys-'));
  const key = 'client-js-tag-test-key-0123456789';
  fs.writeFileSync(path.join(dir, 'keys'), `acme ${key}\n`);
  const own = await h.serve('127.0.0.1:0', ['--api-keys-file', path.join(dir, 'keys'), '--token-secret', 'a-client-js-test-secret-of-some-length']);
  const keyed = async (p, body) => {
    const response = await fetch(`${own.url}${p}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  };
  const user = `k-${run}`;
  try {
    const issued = await keyed('/v1/tokens', { tags: { user } });
    assert.equal(issued.status, 201, JSON.stringify(issued.body));
    const jobs = new Map();
    const errors = [];
    const counting = h.countingFetch();
    const following = followTag(
      { user },
      { base: own.url, token: issued.body.token, fetch: counting, onJob: (job) => jobs.set(job.id, job.status), onError: (e) => errors.push(e) },
    );
    await until(() => counting.calls >= 2, 'the stream open (then the listing, refused without a key)');
    const mine = await keyed('/v1/jobs', { kind: 'demo.echo', tags: { user } });
    const notMine = await keyed('/v1/jobs', { kind: 'demo.echo', tags: { user: `${user}-other` } });
    await until(() => jobs.get(mine.body.id) === 'succeeded', () => `seen ${JSON.stringify([...jobs])}, errors ${errors.map((e) => e.message)}`);
    await h.sleep(300);
    following.close();
    assert.equal(jobs.has(notMine.body.id), false);
    assert.deepEqual(errors, []);
    // A tag token cannot be widened to other tags.
    const widened = followTag({ user: `${user}-other` }, { base: own.url, token: issued.body.token, fetch: counting, onError: (e) => errors.push(e) });
    await until(() => errors.length > 0, 'refused');
    widened.close();
    assert.ok([401, 403].includes(errors[0].status), `status ${errors[0].status}`);
    assert.equal(errors[0].retrying, false);
    await h.sleep(300);
    assert.equal(errors.length, 1, 'no retry after a refusal');
  } finally {
    own.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
