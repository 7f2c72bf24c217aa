// client.js in Chromium (the EventSource transport), loaded from the server's /client.js.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import * as h from '../../clients/js/test/harness.js';
import { launch, open } from './lib.mjs';

let browser;
let worker;
before(async () => {
  browser = await launch();
  worker = h.work(['--concurrency', '4']);
});
after(async () => {
  await browser.close();
  worker.kill();
});

// Starts follow() in the page; its progress lands in window.seen.
async function startFollowing(page, target, options = {}) {
  await page.evaluate(
    async ([target, options]) => {
      const { follow } = await import('/client.js');
      window.seen = { events: [], errors: [], done: undefined };
      window.following = follow(target, {
        ...options,
        onEvent: (e) => window.seen.events.push({ id: e.id, type: e.type }),
        onError: (e) => window.seen.errors.push({ message: e.message, retrying: e.retrying }),
        onDone: (status) => (window.seen.done = status),
      });
    },
    [target, options],
  );
}

const streamRequests = (page, id) => {
  const seen = [];
  page.on('request', (r) => r.url().includes(`/v1/jobs/${id}/events`) && seen.push(r.url()));
  return seen;
};

test('resumes across a killed serve, then the terminal event closes it', async () => {
  const own = await h.serve();
  const listen = new URL(own.url).host;
  const job = await h.submit(own.url, { kind: 'demo.steps', args: { steps: 12, step_ms: 150 } });
  const page = await open(browser, `${own.url}/`);
  page.expectNetworkErrors = true;
  await startFollowing(page, job.id);
  await page.waitForFunction(() => window.seen.events.filter((e) => e.type === 'progress').length >= 3, null, { timeout: 10000 });
  own.kill();
  await h.sleep(500);
  const again = await h.serve(listen);
  await page.waitForFunction(() => window.seen.done !== undefined, null, { timeout: 20000 });
  const seen = await page.evaluate(() => window.seen);
  assert.equal(seen.done, 'succeeded');
  assert.deepEqual(seen.events.map((e) => Number(e.id)), seen.events.map((_, i) => i + 1), 'nothing missed or repeated');
  const requests = streamRequests(page, job.id);
  await h.sleep(1500);
  assert.deepEqual(requests, [], 'no reconnect after the end');
  again.kill();
  await page.close();
});

test('204 stops it: following a finished job from its last id makes one request', async () => {
  const server = await h.serve();
  const job = await h.submit(server.url, { kind: 'demo.echo' });
  const done = await (async () => {
    for (;;) {
      const j = await h.job(server.url, job.id);
      if (j.status === 'succeeded') return j;
      await h.sleep(50);
    }
  })();
  const page = await open(browser, `${server.url}/`);
  page.expectNetworkErrors = true;
  const requests = streamRequests(page, job.id);
  await startFollowing(page, job.id, { lastEventId: done.last_event_id });
  await page.waitForFunction(() => window.seen.done !== undefined, null, { timeout: 5000 });
  assert.equal(await page.evaluate(() => window.seen.done), null);
  await h.sleep(1500);
  // EventSource's own request, then the fetch that learns it was a 204; nothing after.
  assert.ok(requests.length <= 2, `requests: ${requests}`);
  assert.deepEqual(await page.evaluate(() => window.seen.events), []);
  server.kill();
  await page.close();
});

test('a page on another origin (--cors-origins) imports /client.js and shows demo.tokens text with follow and followTag', async () => {
  const app = http.createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>app</title><pre id="answer"></pre>');
  });
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${app.address().port}`;
  const server = await h.serve('127.0.0.1:0', ['--cors-origins', origin]);
  const page = await open(browser, `${origin}/`);
  const user = `x${Date.now()}`;
  try {
    await page.evaluate(
      async ([base, user]) => {
        const { follow, followTag } = await import(`${base}/client.js`);
        window.seen = { text: '', tagText: '', done: undefined, jobs: {} };
        window.tagged = followTag({ user }, {
          base,
          onJob: (job) => (window.seen.jobs[job.id] = job.status),
          onOutput: (id, stream, text) => (window.seen.tagText += text),
          // With EventSource, fetch is only for the listing, asked for once the stream is open.
          fetch: (...args) => ((window.tagOpen = true), fetch(...args)),
        });
        window.startFollowing = (id) =>
          follow(id, {
            base,
            onEvent: (e) => e.type === 'started' && (document.querySelector('#answer').textContent = ''),
            onOutput: (stream, text) => {
              window.seen.text += text;
              document.querySelector('#answer').append(text);
            },
            onDone: (status) => (window.seen.done = status),
          });
      },
      [server.url, user],
    );
    await page.waitForFunction(() => window.tagOpen, null, { timeout: 5000 });
    const job = await h.submit(server.url, { kind: 'demo.tokens', args: { tokens: 30, token_ms: 10 }, tags: { user } });
    await page.evaluate((id) => window.startFollowing(id), job.id);
    await page.waitForFunction(() => window.seen.done !== undefined, null, { timeout: 15000 });
    const expected = Array.from({ length: 30 }, (_, i) => `tok${i + 1} `).join('');
    await page.waitForFunction((id) => window.seen.jobs[id] === 'succeeded', job.id, { timeout: 5000 });
    const seen = await page.evaluate(() => window.seen);
    assert.equal(seen.done, 'succeeded');
    assert.equal(seen.text, expected);
    assert.equal(await page.textContent('#answer'), expected);
    assert.equal(seen.tagText, expected, 'the same text through the tag stream');
    assert.deepEqual(page.errors, []);
  } finally {
    await page.close();
    server.kill();
    app.close();
  }
});
