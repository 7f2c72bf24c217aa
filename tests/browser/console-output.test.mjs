// The console's job page: output streams shown live (demo.tokens), and its own stream
// counted among the subscribers. A real Chromium against real `serve` and `work` processes.
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
  worker = h.work(['--concurrency', '8']);
});
after(async () => {
  await browser.close();
  server.kill();
  worker.kill();
});

const tokens = (n) => Array.from({ length: n }, (_, i) => `tok${i + 1} `).join('');
const pane = '#output pre.term[data-stream="output"]';

test('one click runs demo.tokens and its page shows the text arriving, as a terminal following the tail', async () => {
  const page = await open(browser, `${server.url}/`);
  await page.waitForSelector('#conn.live');
  await page.click('#demo-tokens');
  await page.waitForURL(/#\/jobs\/\d+$/, { timeout: 5000 });
  const id = page.url().match(/#\/jobs\/(\d+)$/)[1];
  const job = await h.job(server.url, id);
  assert.equal(job.kind, 'demo.tokens');
  assert.deepEqual(job.args, { tokens: 200, token_ms: 20 });
  // While it runs, the text grows: sampled several times, it is a growing prefix of the whole.
  await page.waitForSelector(`${pane}:has-text("tok3 ")`, { timeout: 10000 });
  const samples = [];
  for (let i = 0; i < 6; i++) {
    samples.push(await page.textContent(pane));
    await page.waitForTimeout(250);
  }
  const whole = tokens(200);
  assert.ok(samples.every((s) => whole.startsWith(s)), 'each sample is a prefix of the final text');
  assert.ok(new Set(samples).size >= 3, `the text grew while the page watched: ${samples.map((s) => s.length)}`);
  await page.waitForSelector('.status.succeeded', { timeout: 15000 });
  await page.waitForFunction((sel) => document.querySelector(sel).textContent.endsWith('tok200 '), pane, { timeout: 5000 });
  assert.equal(await page.textContent(pane), whole);
  // Output events are one row per run in the event log, not one per append.
  const rows = await page.$$eval('#log tr.output-row', (trs) => trs.length);
  assert.equal(rows, 1);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("a long output keeps the pane scrolled to its end; after the job ended the page still shows it all", async () => {
  const job = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 2500, token_ms: 1 } });
  const page = await open(browser, `${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector('.status.succeeded', { timeout: 20000 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.endsWith('tok2500 '), pane, { timeout: 5000 });
  const box = await page.$eval(pane, (pre) => ({ top: pre.scrollTop, height: pre.clientHeight, scroll: pre.scrollHeight }));
  assert.ok(box.scroll > box.height, `the text overflows the pane: ${JSON.stringify(box)}`);
  assert.ok(box.top + box.height >= box.scroll - 4, `scrolled to the tail: ${JSON.stringify(box)}`);
  // A fresh page on the finished job: the text is back (replayed), whole.
  await page.reload();
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.endsWith('tok2500 '), pane, { timeout: 10000 });
  assert.equal(await page.textContent(pane), tokens(2500));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a job without output shows no output section', async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 2, step_ms: 20 } });
  const page = await open(browser, `${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector('.status.succeeded', { timeout: 10000 });
  assert.equal(await page.$eval('#output', (s) => s.hidden), true);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the page following a job counts itself among its subscribers', async () => {
  const job = await h.submit(server.url, { kind: 'demo.steps', args: { steps: 30, step_ms: 200 } });
  const page = await open(browser, `${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector('#subscribers');
  const texts = [await page.textContent('#subscribers')];
  for (let i = 0; i < 4; i++) {
    await page.waitForTimeout(1000);
    texts.push(await page.textContent('#subscribers'));
  }
  for (const t of texts) assert.match(t, /^[1-9]\d* \(this page included\)$/, `subscribers: ${texts}`);
  await h.post(server.url, `/v1/jobs/${job.id}/cancel`);
  assert.deepEqual(page.errors, []);
  await page.close();
});
