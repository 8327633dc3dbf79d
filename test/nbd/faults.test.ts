/**
 * A failing or vanishing NBD server, and bad addresses, through the CLI: each gives one clear line
 * naming the address (never a password) and the failed request, exit 1, within a bound; a copy
 * leaves no output behind.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, existsSync, readdirSync } from 'node:fs';
import { tempDir, releaseAll } from '../helpers/fixtures.js';
import { buildDisk } from '../helpers/disk-builder.js';
import { extract, e2fsck } from '../helpers/ext-fixtures.js';
import { sparsify, sparsifyAsync } from '../helpers/cli.js';
import { qemuNbd, nbdkit, ServerPool } from './servers.js';

const T = { timeout: 60_000 };
let dir = '';
let cleanup = (): void => undefined;
const servers = new ServerPool();
let disk = '';

before(() => {
  ({ dir, cleanup } = tempDir('sparsify-nbd-faults-'));
  disk = join(dir, 'disk.raw');
  buildDisk(disk, { sizeMiB: 48, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 40, ext: { type: 'ext4', files: {} } }] });
});

after(() => releaseAll(...servers.stops, () => cleanup()));

/** Nothing of a copy is left in the folder: no output, no temporary file. */
function noOutput(name: string): void {
  assert.equal(existsSync(join(dir, name)), false);
  assert.deepEqual(readdirSync(dir).filter((f) => f.includes(name)), []);
}

function oneLineError(stderr: string): void {
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  assert.doesNotMatch(stderr, /internal error/);
}

test('reads that fail (nbdkit error filter): the address and the failed READ are named, exit 1, no output', T, async () => {
  const s = await servers.serve(nbdkit(dir, ['--filter=error', 'file', disk, 'error-pread=EIO', 'error-pread-rate=100%']));
  const r = sparsify([s.uri, join(dir, 'out1.raw')]);
  assert.equal(r.status, 1, r.stderr);
  assert.ok(r.stderr.includes(`${s.uri}: READ at 0x`), r.stderr);
  assert.match(r.stderr, /failed: EIO/);
  oneLineError(r.stderr);
  noOutput('out1.raw');
});

test('zeroing that fails in place (error filter on WRITE_ZEROES): WRITE_ZEROES named, exit 1, the filesystem still clean', T, async () => {
  const img = join(dir, 'zero-fails.raw');
  copyFileSync(disk, img);
  const s = await servers.serve(nbdkit(dir, ['--filter=error', 'file', img, 'error-zero=EIO', 'error-zero-rate=100%', 'error-trim=EIO', 'error-trim-rate=100%']));
  const r = sparsify(['--in-place', s.uri]);
  await s.stop();
  assert.equal(r.status, 1, r.stderr);
  assert.ok(r.stderr.includes(`${s.uri}: WRITE_ZEROES at 0x`), r.stderr);
  oneLineError(r.stderr);
  const p = join(dir, 'zf-part.img');
  extract(img, 1 << 20, 40 << 20, p);
  assert.equal(e2fsck(p).status, 0);
});

test('the server killed mid-copy: the failed request is named, exit 1, no output claimed complete', T, async () => {
  const s = await servers.serve(nbdkit(dir, ['--filter=delay', 'file', disk, 'rdelay=200ms']));
  const child = sparsifyAsync([s.uri, join(dir, 'out2.raw')]);
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  // Killed once the copy has started (its status line), however slowly a busy machine starts it.
  const copying = new Promise<void>((resolve) => {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('Copy to destination')) resolve();
    });
    child.once('exit', () => resolve());
  });
  const code = new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? -1)));
  try {
    await copying;
    await new Promise((r) => setTimeout(r, 300));
    s.proc.kill('SIGKILL');
    assert.equal(await code, 1, stderr);
  } finally {
    child.kill('SIGKILL');
  }
  assert.ok(stderr.includes(s.uri), stderr);
  assert.match(stderr, /(READ|BLOCK_STATUS) at 0x[0-9a-f]+ \(\+\d+\) failed: (the server closed the connection|connection failed: [A-Z]+)/);
  oneLineError(stderr);
  noOutput('out2.raw');
});

test('a server that stops answering: the request times out (SPARSIFY_NBD_TIMEOUT), exit 1, never a hang', T, async () => {
  const s = await servers.serve(nbdkit(dir, ['--filter=delay', 'file', disk, 'rdelay=30']));
  const t0 = Date.now();
  process.env['SPARSIFY_NBD_TIMEOUT'] = '2';
  let r;
  try {
    r = sparsify([s.uri, join(dir, 'out3.raw')]);
  } finally {
    delete process.env['SPARSIFY_NBD_TIMEOUT'];
  }
  assert.equal(r.status, 1, r.stderr);
  assert.ok(Date.now() - t0 < 20_000);
  assert.match(r.stderr, /no reply to READ at 0x0 \(\+\d+\) within 2 s/);
  assert.ok(r.stderr.includes(s.uri));
  noOutput('out3.raw');
});

test('bad addresses: no socket, unknown export, read-only export in place, nbds to a plain server; a password is never shown', T, async () => {
  let r = sparsify([`nbd+unix:///?socket=${join(dir, 'nope.sock')}`, join(dir, 'o.raw')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /nope\.sock: cannot connect: ENOENT/);

  const s = await servers.serve(qemuNbd(dir, disk, { format: 'raw', extra: ['-x', 'disk'] }));
  r = sparsify([`nbd+unix:///other?socket=${s.socket}`, join(dir, 'o.raw')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /export 'other' refused/);
  r = sparsify(['--in-place', `nbd+unix:///disk?socket=${s.socket}`]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /the export is read-only/);
  r = sparsify([`nbds+unix:///disk?socket=${s.socket}`, join(dir, 'o.raw')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /does not offer TLS/);
  oneLineError(r.stderr);

  r = sparsify(['nbd://alice:hunter2@127.0.0.1:1/x', join(dir, 'o.raw')]);
  assert.equal(r.status, 1);
  assert.doesNotMatch(r.stderr + r.stdout, /hunter2/);
  assert.match(r.stderr, /nbd:\/\/alice@127\.0\.0\.1:1\/x: cannot connect: ECONNREFUSED/);
  r = sparsify(['nbd+unix:///x', join(dir, 'o.raw')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /needs \?socket=PATH/);
  noOutput('o.raw');
});
