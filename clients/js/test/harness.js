// Test harness: the real `jobcast` binary (JOBCAST_BIN, default target/debug/jobcast) as
// `serve` and `work` processes against DATABASE_URL (a migrated database).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.JOBCAST_BIN || path.join(root, 'target/debug/jobcast');
export const DATABASE_URL = process.env.DATABASE_URL;
if (!DATABASE_URL) throw new Error('DATABASE_URL must point at a migrated jobcast database');

const children = new Set();
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

/** `jobcast serve` on `listen` (default: a free port); resolves once it listens. */
export function serve(listen = '127.0.0.1:0', extra = []) {
  const child = spawn(BIN, ['serve', '--listen', listen, '--database-url', DATABASE_URL, ...extra], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/jobcast listening on (\S+)/);
      if (m) resolve({ url: m[1], child, kill: () => child.kill('SIGKILL') });
    });
    child.on('exit', (code) => reject(new Error(`serve exited (${code}) before listening`)));
  });
}

/** `jobcast work` with the demo handlers. */
export function work(extra = []) {
  const child = spawn(BIN, ['work', '--database-url', DATABASE_URL, ...extra], { stdio: 'ignore' });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return { child, kill: () => child.kill('SIGKILL') };
}

export async function submit(server, spec) {
  const response = await fetch(`${server}/v1/jobs`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(spec),
  });
  if (response.status !== 202) throw new Error(`submit: ${response.status} ${await response.text()}`);
  return response.json();
}

export async function post(server, p) {
  // Every POST says JSON, even without a body (a hardened server refuses others).
  const response = await fetch(`${server}${p}`, { method: 'POST', headers: { 'Content-Type': 'application/json' } });
  return { status: response.status, body: await response.json() };
}

export async function job(server, id) {
  return (await fetch(`${server}/v1/jobs/${id}`)).json();
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A fetch that counts its calls. */
export function countingFetch() {
  const f = (...args) => {
    f.calls += 1;
    return fetch(...args);
  };
  f.calls = 0;
  return f;
}

/** Follows until onDone (or onError with retrying false); resolves with what was seen. */
export function followToEnd(follow, target, options = {}) {
  return new Promise((resolve, reject) => {
    const seen = { events: [], progress: [], errors: [], status: undefined };
    const timer = setTimeout(() => reject(new Error(`not done; seen ${JSON.stringify(seen)}`)), options.timeout || 20000);
    seen.following = follow(target, {
      ...options,
      onEvent: (e) => {
        seen.events.push(e);
        if (options.onEvent) options.onEvent(e);
      },
      onProgress: (p) => seen.progress.push(p),
      onError: (e) => {
        seen.errors.push(e);
        if (!e.retrying) {
          clearTimeout(timer);
          resolve(seen);
        }
      },
      onDone: (status, event) => {
        seen.status = status;
        seen.doneEvent = event;
        clearTimeout(timer);
        resolve(seen);
      },
    });
  });
}

export function assertContiguous(assert, events, first = 1) {
  const ids = events.map((e) => Number(e.id));
  assert.deepStrictEqual(ids, Array.from({ length: ids.length }, (_, i) => first + i));
}
