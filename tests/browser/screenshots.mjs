// The README's console screenshots, from a real run (see scripts/screenshots).
import * as h from '../../clients/js/test/harness.js';
import { launch, open } from './lib.mjs';

const out = process.argv[2] || 'docs';
const server = await h.serve();
const workers = [
  h.work(['--queues', 'default,reports', '--concurrency', '6', '--retry-base-ms', '200']),
  h.work(['--queues', 'default,mail', '--concurrency', '4', '--retry-base-ms', '200']),
];
const post = (p) => h.post(server.url, p);
const minutesAgo = (m) => new Date(Date.now() - m * 60000).toISOString();

// History for the sparklines and failure rates.
for (let i = 0; i < 60; i++) {
  await h.submit(server.url, { kind: 'demo.echo', queue: i % 3 ? 'default' : 'reports', args: { order: i } });
}
for (let i = 0; i < 4; i++) {
  await h.submit(server.url, { kind: 'demo.steps', queue: 'reports', max_attempts: 2, args: { steps: 3, step_ms: 30, fail_at: 2 } });
}
await post('/v1/queues/mail/pause');
for (let i = 0; i < 5; i++) await h.submit(server.url, { kind: 'demo.echo', queue: 'mail', args: { to: `user${i}@example.com` } });
await h.submit(server.url, { kind: 'billing.invoice', args: { customer: 42 }, run_at: minutesAgo(7) });
const long = [];
for (let i = 0; i < 4; i++) long.push(await h.submit(server.url, { kind: 'demo.steps', args: { steps: 40, step_ms: 400 + 100 * i } }));
const shown = await h.submit(server.url, { kind: 'demo.steps', max_attempts: 3, args: { steps: 80, step_ms: 300 } });
await h.sleep(6500); // workers announce themselves; the long jobs get going

const browser = await launch();
const page = await open(browser, `${server.url}/`, { width: 1360, height: 1000 });
await page.waitForSelector('#conn.live');
await page.waitForSelector('[data-queue-row="mail"] .status.paused');
await page.waitForTimeout(1500);
await page.screenshot({ path: `${out}/console-overview.png` });

// A job page: a run cancelled halfway, retried, running again with its live log.
const jobPage = await open(browser, `${server.url}/#/jobs/${shown.id}`, { width: 1360, height: 1000 });
await jobPage.waitForSelector('#log tr >> text=progress');
await jobPage.waitForTimeout(1500);
await jobPage.click('#cancel');
await jobPage.waitForSelector('#retry:not([disabled])');
await jobPage.click('#retry');
await jobPage.waitForSelector('.status.running');
await jobPage.waitForTimeout(2500);
await jobPage.screenshot({ path: `${out}/console-job.png` });

const errors = [...page.errors, ...jobPage.errors];
await browser.close();
server.kill();
workers.forEach((w) => w.kill());
if (errors.length) {
  console.error(`console errors: ${errors.join('\n')}`);
  process.exit(1);
}
console.log(`wrote ${out}/console-overview.png and ${out}/console-job.png`);
process.exit(0);
