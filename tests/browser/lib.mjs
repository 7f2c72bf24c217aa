// Chromium for the browser tests: playwright-core from PLAYWRIGHT_DIR (installed by
// scripts/setup-browser), the Debian chromium at CHROMIUM.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR || 'target/browser-tests', 'package.json'));
const { chromium } = require('playwright-core');

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

/** A page that records console errors and uncaught exceptions in `page.errors`. */
export async function open(browser, url, viewport = { width: 1280, height: 900 }) {
  const page = await browser.newPage({ viewport });
  page.errors = [];
  page.on('console', (m) => {
    // A server killed on purpose makes the browser log failed requests; the tests that do
    // that look at the banner instead.
    // A server without schedules answers GET /v1/schedules with 404: the console leaves the
    // section out (tested), but Chromium logs the 404 anyway.
    const absentSchedules = /status of 404/.test(m.text()) && /\/v1\/schedules$/.test(m.location().url || '');
    if (m.type() === 'error' && !page.expectNetworkErrors && !absentSchedules) page.errors.push(m.text());
  });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(url);
  return page;
}
