// The console in a real Chromium against real `serve` and `work` processes.
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
  worker = h.work(['--concurrency', '16', '--queues', 'default,fa,fb']);
});
after(async () => {
  await browser.close();
  server.kill();
  worker.kill();
});

test('loads without console errors and shows a job within 200 ms of its queued event', async () => {
  const page = await open(browser, `${server.url}/`);
  await page.waitForSelector('#conn.live');
  // Record when each row first appears, by the page's clock (the server's: same machine).
  await page.evaluate(() => {
    window.rowSeen = {};
    new MutationObserver(() => {
      for (const tr of document.querySelectorAll('#jobs [data-id]')) window.rowSeen[tr.dataset.id] ??= Date.now();
    }).observe(document.body, { childList: true, subtree: true });
  });
  const lags = [];
  for (let i = 0; i < 5; i++) {
    const job = await h.submit(server.url, { kind: 'demo.echo', args: { i } });
    await page.waitForSelector(`#jobs [data-id="${job.id}"]`, { timeout: 5000 });
    const seen = await page.evaluate((id) => window.rowSeen[id], job.id);
    const events = await (await fetch(`${server.url}/v1/jobs/${job.id}/events`)).text();
    const queuedAt = JSON.parse(events.match(/event: queued\ndata: (.*)\n/)[1]).at;
    lags.push(seen - Date.parse(queuedAt));
  }
  console.log(`# queued event to row: ${lags.map((l) => `${l} ms`).join(', ')}`);
  // The median must be within 200 ms; one slow sample on a loaded CI machine may take longer.
  const median = [...lags].sort((a, b) => a - b)[2];
  assert.ok(median <= 200 && Math.max(...lags) <= 500, `lags ${lags}`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("a running job's progress bar moves and ends full", async () => {
  const page = await open(browser, `${server.url}/`);
  await page.waitForSelector('#conn.live');
  const job = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 8, step_ms: 250 } });
  const row = `#jobs [data-id="${job.id}"]`;
  await page.waitForSelector(`${row}.running`, { timeout: 5000 });
  const widths = new Set();
  for (let i = 0; i < 12; i++) {
    widths.add(await page.$eval(`${row} .bar > i`, (e) => e.style.width));
    await page.waitForTimeout(200);
  }
  await page.waitForSelector(`${row}.succeeded`, { timeout: 10000 });
  assert.equal(await page.$eval(`${row} .bar > i`, (e) => e.style.width), '100%');
  const middle = [...widths].filter((w) => w !== '0%' && w !== '100%');
  assert.ok(middle.length >= 2, `the bar moved through ${[...widths]}`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('cancel and retry from the job page, with the live event log', async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 40, step_ms: 100 } });
  const page = await open(browser, `${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector('#log tr[data-seq] >> text=progress', { timeout: 10000 });
  await page.click('#cancel');
  await page.waitForSelector('.status.cancelled');
  await page.waitForSelector('#log tr >> text=cancelled');
  assert.equal(await page.$eval('#retry', (b) => b.disabled), false);
  await page.click('#retry');
  await page.waitForSelector('#log tr >> text=retried', { timeout: 5000 });
  await page.waitForSelector('.status.running', { timeout: 5000 });
  const seqs = await page.$$eval('#log tr[data-seq]', (rows) => rows.map((r) => Number(r.dataset.seq)));
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'every event once, in order');
  assert.match(await page.textContent('#curl'), new RegExp(`curl -N .*/v1/jobs/${job.id}/events`));
  await page.click('#cancel');
  await page.waitForSelector('.status.cancelled');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("a failed job's page shows its error and attempts", async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', max_attempts: 2, args: { steps: 2, step_ms: 10, fail_at: 1 } });
  const page = await open(browser, `${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector('.status.failed', { timeout: 15000 });
  assert.equal(await page.textContent('#error'), 'demo.steps failed at step 1/2');
  const outcomes = await page.$$eval('section tbody tr td:nth-child(4)', (tds) => tds.map((td) => td.textContent));
  assert.deepEqual(outcomes.slice(0, 2), ['retrying', 'failed']);
  assert.equal(await page.$eval('#retry', (b) => b.disabled), false);
  assert.equal(await page.$eval('#cancel', (b) => b.disabled), true);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('filters: queue and status narrow the list, live updates included', async () => {
  const a = await h.submit(server.url, { kind: 'demo.echo', queue: 'fa' });
  const b = await h.submit(server.url, { kind: 'demo.echo', queue: 'fb' });
  const page = await open(browser, `${server.url}/#/?queue=fa`);
  await page.waitForSelector(`#jobs [data-id="${a.id}"]`);
  assert.equal(await page.$(`#jobs [data-id="${b.id}"]`), null);
  const later = await h.submit(server.url, { kind: 'demo.echo', queue: 'fa' });
  const other = await h.submit(server.url, { kind: 'demo.echo', queue: 'fb' });
  await page.waitForSelector(`#jobs [data-id="${later.id}"]`);
  await page.waitForTimeout(400);
  assert.equal(await page.$(`#jobs [data-id="${other.id}"]`), null);
  const queues = await page.$$eval('#jobs [data-id] > :nth-child(3)', (tds) => [...new Set(tds.map((td) => td.textContent))]);
  assert.deepEqual(queues, ['fa']);
  // A status filter keeps the list true: a running job leaves it when it finishes.
  await page.goto(`${server.url}/#/?status=running`);
  const running = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 6, step_ms: 200 } });
  await page.waitForSelector(`#jobs [data-id="${running.id}"].running`, { timeout: 5000 });
  await page.waitForSelector(`#jobs [data-id="${running.id}"]`, { state: 'detached', timeout: 10000 });
  await page.goto(`${server.url}/#/`);
  await page.fill('#filters input[name=queue]', '');
  await page.fill('#filters input[name=text]', b.id);
  await page.press('#filters input[name=text]', 'Enter');
  await page.waitForSelector(`#jobs [data-id="${b.id}"]`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('pause and resume a queue from the overview', async () => {
  await h.submit(server.url, { kind: 'demo.echo', queue: 'fb' });
  const page = await open(browser, `${server.url}/`);
  const button = '[data-queue-row="fb"] button';
  await page.waitForSelector(`${button} >> text=Pause`);
  await page.click(button);
  await page.waitForSelector('[data-queue-row="fb"] .status.paused');
  const held = await h.submit(server.url, { kind: 'demo.echo', queue: 'fb' });
  await page.waitForTimeout(1500);
  assert.equal((await h.job(server.url, held.id)).status, 'queued');
  await page.click(`${button} >> text=Resume`);
  await page.waitForSelector(`#jobs [data-id="${held.id}"].succeeded`, { timeout: 5000 });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a dropped server shows the banner, and recovery brings the missed jobs with no duplicate rows', async () => {
  const own = await h.serve();
  const listen = new URL(own.url).host;
  const page = await open(browser, `${own.url}/`);
  page.expectNetworkErrors = true;
  await page.waitForSelector('#conn.live');
  const before = await h.submit(server.url, { kind: 'demo.echo', args: { phase: 'before' } });
  await page.waitForSelector(`#jobs [data-id="${before.id}"]`);
  own.kill();
  await page.waitForSelector('#banner.down', { timeout: 5000 });
  assert.match(await page.textContent('#banner'), /Connection lost/);
  const during = [];
  for (let i = 0; i < 3; i++) during.push(await h.submit(server.url, { kind: 'demo.echo', args: { phase: 'during', i } }));
  const again = await h.serve(listen);
  await page.waitForSelector('#banner.back', { timeout: 20000 });
  assert.match(await page.textContent('#banner'), /restored/);
  for (const job of during) await page.waitForSelector(`#jobs [data-id="${job.id}"]`, { timeout: 5000 });
  const ids = await page.$$eval('#jobs [data-id]', (rows) => rows.map((r) => r.dataset.id));
  assert.equal(ids.length, new Set(ids).size, `duplicate rows: ${ids}`);
  again.kill();
  await page.close();
});
