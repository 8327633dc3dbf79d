// Runs every compiled *.test.js under dist/test with node's test runner (Node 20 has no --test globs,
// and its directory mode would also run helper modules).
// A stuck test must fail, never hang the run: every test gets --test-timeout (files set tighter
// ones of their own), and --test-force-exit ends a file's process once its tests are done even if
// something it started (a server, a stream) is still holding it open.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const files = [];
const walk = (d) => {
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name.endsWith('.test.js')) files.push(p);
  }
};
walk('dist/test');
files.sort();
const extra = process.argv.slice(2);
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=600000', '--test-force-exit', ...extra, ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
