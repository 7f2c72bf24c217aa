// client.js stays small: under 6.5 KB minified (terser, from scripts/setup-browser). It was 5 KB
// for follow() alone; followTag() and the output text per stream took it to about 5.9 KB, and
// the `reset` event (a failover that lost events) to about 6.2 KB.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR || 'target/browser-tests', 'package.json'));

test('client.js is under 6.5 KB minified', async () => {
  const { minify } = require('terser');
  const source = fs.readFileSync(new URL('../../clients/js/client.js', import.meta.url), 'utf8');
  const { code } = await minify(source, { module: true, compress: true, mangle: true });
  console.log(`# client.js: ${source.length} B source, ${code.length} B minified, ${zlib.gzipSync(code).length} B gzipped`);
  assert.ok(code.length < 6656, `${code.length} bytes minified`);
});
