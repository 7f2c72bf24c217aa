// Auth in a real browser: a page on another origin (in the CORS allow-list) follows a job
// with the token URL of its `links.events` through EventSource, which cannot send headers;
// a token for another job is refused and EventSource gives up (no reconnect loop).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as h from '../../clients/js/test/harness.js';
import { launch } from './lib.mjs';

const KEY = 'acme-browser-key-0123456789';
let browser;
let worker;
let page;
let origin;
let app;
before(async () => {
  browser = await launch();
  worker = h.work(['--concurrency', '4']);
  // The app's own page, on its own origin: it only ever sees token URLs, never the key.
  app = http.createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>app</title><p>app page</p>');
  });
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${app.address().port}`;
});
after(async () => {
  await browser.close();
  worker.kill();
  app.close();
});

async function keyed(server, method, p, body) {
  const response = await fetch(`${server}${p}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

// Follows `url` with EventSource in the page; resolves with what the page saw.
async function followInPage(url) {
  return page.evaluate(
    (url) =>
      new Promise((resolve) => {
        const seen = { events: [], error: null };
        const source = new EventSource(url);
        for (const type of ['queued', 'started', 'progress', 'succeeded', 'failed', 'cancelled']) {
          source.addEventListener(type, (e) => {
            seen.events.push({ id: e.lastEventId, type });
            if (['succeeded', 'failed', 'cancelled'].includes(type)) {
              source.close();
              resolve(seen);
            }
          });
        }
        source.onerror = () => {
          if (source.readyState === EventSource.CLOSED) {
            seen.error = 'closed';
            resolve(seen);
          }
        };
        setTimeout(() => {
          source.close();
          seen.error = seen.error || 'timeout';
          resolve(seen);
        }, 20000);
      }),
    url,
  );
}

test('a page on an allowed origin follows a job with its token URL', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jobcast-keys-'));
  const keys = path.join(dir, 'keys');
  fs.writeFileSync(keys, `acme ${KEY}\n`);
  const server = await h.serve('127.0.0.1:0', [
    '--api-keys-file', keys,
    '--token-secret', 'a-browser-test-secret-of-some-length',
    '--cors-origins', origin,
  ]);
  page = await browser.newPage();
  await page.goto(`${origin}/`);

  // The backend submits with its key and hands the page the token URL.
  const submitted = await keyed(server.url, 'POST', '/v1/jobs', { kind: 'demo.steps', args: { steps: 4, step_ms: 100 } });
  assert.equal(submitted.status, 202);
  const events = submitted.body.links.events;
  assert.match(events, /\?token=/, 'links.events carries a token when auth is on');
  const seen = await followInPage(`${server.url}${events}`);
  assert.equal(seen.error, null, JSON.stringify(seen));
  assert.deepEqual(seen.events.map((e) => Number(e.id)), seen.events.map((_, i) => i + 1), 'ids 1..n');
  assert.equal(seen.events.at(-1).type, 'succeeded');

  // The same token on another job's stream: 401, and EventSource stops.
  const other = await keyed(server.url, 'POST', '/v1/jobs', { kind: 'demo.echo' });
  const token = new URL(events, server.url).searchParams.get('token');
  const refused = await followInPage(`${server.url}/v1/jobs/${other.body.id}/events?token=${token}`);
  assert.equal(refused.error, 'closed');
  assert.deepEqual(refused.events, []);

  await page.close();
  server.kill();
  fs.rmSync(dir, { recursive: true, force: true });
});
