// The console's tag filter, schedules, queue limits and wording of durations. A real
// Chromium against real `serve` and `work` processes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as h from '../../clients/js/test/harness.js';
import { launch, open } from './lib.mjs';

let browser;
let server;
let worker;
before(async () => {
  browser = await launch();
  server = await h.serve();
  worker = h.work(['--concurrency', '8', '--queues', 'default,limited']);
});
after(async () => {
  await browser.close();
  server.kill();
  worker.kill();
});

const run = `${process.pid}${Date.now() % 100000}`;

async function request(method, path, body) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

test('the tag filter lists the jobs with that tag (GET /v1/jobs?tag=) and adds new ones live', async () => {
  const user = `t${run}`;
  const tagged = await h.submit(server.url, { kind: 'demo.echo', tags: { user } });
  const otherValue = await h.submit(server.url, { kind: 'demo.echo', tags: { user: `${user}x` } });
  const untagged = await h.submit(server.url, { kind: 'demo.echo' });
  const page = await open(browser, `${server.url}/`);
  await page.waitForSelector('#conn.live');
  const listed = page.waitForRequest((r) => r.url().includes('/v1/jobs?') && new URL(r.url()).searchParams.get('tag') === `user:${user}`);
  await page.fill('#filters input[name=tag]', `user:${user}`);
  await page.press('#filters input[name=tag]', 'Enter');
  await listed;
  await page.waitForSelector(`#jobs [data-id="${tagged.id}"]`, { timeout: 5000 });
  // Tagged jobs show their tags in the list.
  assert.match(await page.textContent(`#jobs [data-id="${tagged.id}"] .tag`), new RegExp(`user:${user}`));
  const later = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 2, step_ms: 50 }, tags: { user, project: 'apollo' } });
  const laterOther = await h.submit(server.url, { kind: 'demo.echo', tags: { user: `${user}x` } });
  await page.waitForSelector(`#jobs [data-id="${later.id}"].succeeded`, { timeout: 10000 });
  await page.waitForTimeout(400);
  for (const job of [otherValue, untagged, laterOther]) assert.equal(await page.$(`#jobs [data-id="${job.id}"]`), null, `job ${job.id} is not shown`);
  // Two tags: both must match.
  await page.goto(`${server.url}/#/?tag=user:${user}&tag=project:apollo`);
  await page.waitForSelector(`#jobs [data-id="${later.id}"]`, { timeout: 5000 });
  await page.waitForTimeout(300);
  assert.equal(await page.$(`#jobs [data-id="${tagged.id}"]`), null);
  // The job page links its tags to the filtered list.
  await page.goto(`${server.url}/#/jobs/${later.id}`);
  await page.click(`#tags a >> text=project:apollo`);
  await page.waitForSelector(`#jobs [data-id="${later.id}"]`, { timeout: 5000 });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('schedules: name, cron, timezone, next run as "in …", pause from the console', async () => {
  const name = `console-${run}`;
  const created = await request('POST', '/v1/schedules', {
    name,
    cron: '0 3 * * *',
    timezone: 'Europe/Paris',
    job: { kind: 'demo.echo', args: { from: 'schedule' } },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  try {
    const page = await open(browser, `${server.url}/`);
    const row = `#schedules [data-schedule="${name}"]`;
    await page.waitForSelector(row, { timeout: 5000 });
    const cells = await page.$$eval(`${row} td`, (tds) => tds.map((td) => td.textContent));
    assert.match(cells[0], new RegExp(name));
    assert.equal(cells[1], '0 3 * * *');
    assert.equal(cells[2], 'Europe/Paris');
    assert.equal(cells[3], 'demo.echo');
    assert.match(cells[4], /^in \d+(\.\d)? (s|min|h)$/, `next run: ${cells[4]}`);
    assert.equal(cells[5], 'never');
    await page.click(`${row} button >> text=Pause`);
    await page.waitForSelector(`${row} .status.paused`, { timeout: 5000 });
    assert.equal((await request('GET', `/v1/schedules/${name}`)).body.paused, true);
    assert.deepEqual(page.errors, []);
    await page.close();
  } finally {
    await request('DELETE', `/v1/schedules/${name}`);
  }
});

test('a server without schedules: the section is left out, asked once', async () => {
  const page = await open(browser, 'about:blank');
  let asked = 0;
  await page.route('**/v1/schedules', (route) => {
    asked += 1;
    route.fulfill({ status: 404, contentType: 'application/problem+json', body: '{"status":404,"title":"Not found","type":"about:blank","detail":"no such route"}' });
  });
  await page.goto(`${server.url}/`);
  await page.waitForSelector('#overview section h2', { timeout: 5000 });
  await page.waitForTimeout(5500); // one overview refresh
  assert.equal(await page.$('#schedules'), null);
  assert.doesNotMatch(await page.textContent('#overview'), /\bnull\b/, 'nothing in its place');
  assert.equal(asked, 1);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('queue limits (PATCH /v1/queues/NAME) show on the overview', async () => {
  await h.submit(server.url, { kind: 'demo.echo', queue: 'limited' });
  const patched = await request('PATCH', '/v1/queues/limited', { concurrency: 2, rate_per_second: 5, burst: 10 });
  assert.equal(patched.status, 200, JSON.stringify(patched.body));
  try {
    const page = await open(browser, `${server.url}/`);
    await page.waitForSelector('[data-queue-row="limited"] td.limits', { timeout: 5000 });
    assert.equal(await page.textContent('[data-queue-row="limited"] td.limits'), '≤ 2 running · 5/s (burst 10)');
    assert.equal(await page.textContent('[data-queue-row="default"] td.limits'), '–');
    assert.deepEqual(page.errors, []);
    await page.close();
  } finally {
    await request('PATCH', '/v1/queues/limited', { concurrency: null, rate_per_second: null });
  }
});

test('a kind no worker takes: the overview says how long in seconds, never "in 0 minutes"', async () => {
  const job = await h.submit(server.url, { kind: `nobody.takes.${run}` });
  try {
    const page = await open(browser, `${server.url}/`);
    const hint = await page.waitForSelector(`[data-orphan="nobody.takes.${run}"]`, { timeout: 10000 });
    const text = await hint.textContent();
    assert.doesNotMatch(text, /\b0 minutes?\b/);
    assert.match(text, /waited \d+ s\b/);
    assert.deepEqual(page.errors, []);
    await page.close();
  } finally {
    await h.post(server.url, `/v1/jobs/${job.id}/cancel`);
  }
});
