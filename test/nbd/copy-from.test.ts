/**
 * Copy mode from NBD exports served by qemu-nbd and nbdkit: the copy equals the copy of the same
 * file (byte for byte, qemu-img compare for container formats), the filesystem checks clean and
 * every file is intact; also without structured replies (--no-sr), without block status
 * (noextents) and with a server that insists on 64 KiB blocks.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { tempDir, run, sha256, releaseAll } from '../helpers/fixtures.js';
import { sparsifyCopy } from '../../src/operations/copy.js';
import { sparsify } from '../helpers/cli.js';
import { NbdClient } from '../../src/io/nbd/client.js';
import { parseNbdUri } from '../../src/io/nbd/uri.js';
import { qemuNbd, nbdkit, ServerPool } from './servers.js';
import { buildGuest, guestSums, checkGuestFiles } from './guest.js';

const T = { timeout: 120_000 };
let dir = '';
let cleanup = (): void => undefined;
const servers = new ServerPool();
let disk = '';
let ref = '';
let wantSums = new Map<string, string>();

function fileSha(p: string): string {
  return sha256(readFileSync(p));
}

before(async () => {
  ({ dir, cleanup } = tempDir('sparsify-nbd-copy-'));
  disk = join(dir, 'disk.raw');
  buildGuest(disk, dir);
  ref = join(dir, 'ref.raw');
  await sparsifyCopy({ input: disk, output: ref });
  wantSums = guestSums(ref, dir);
  assert.equal(wantSums.size, 12);
});

after(() => releaseAll(...servers.stops, () => cleanup()));

/** The output's filesystem checks clean and holds every file as it was. */
const checkGuest = (raw: string): void => checkGuestFiles(raw, dir, wantSums);

test('raw export (qemu-nbd): the copy equals the file copy; holes and free space are never read', T, async () => {
  const s = await servers.serve(qemuNbd(dir, disk, { format: 'raw' }));
  const out = join(dir, 'from-nbd.raw');
  const r = await sparsifyCopy({ input: s.uri, output: out });
  assert.equal(fileSha(out), fileSha(ref));
  checkGuest(out);
  assert.ok(r.bytesRead <= r.plan.keep.total(), `read ${r.bytesRead} of ${r.plan.keep.total()} kept`);
  await s.stop();
});

test('guest view of a qcow2 (qemu-nbd -f qcow2) to qcow2: qemu-img compare and check', T, async () => {
  const q = join(dir, 'guest.qcow2');
  run('qemu-img', ['convert', '-O', 'qcow2', disk, q]);
  const s = await servers.serve(qemuNbd(dir, q, { format: 'qcow2' }));
  const out = join(dir, 'from-guest.qcow2');
  await sparsifyCopy({ input: s.uri, output: out, convert: 'qcow2' });
  run('qemu-img', ['check', out]);
  assert.match(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', out, ref]), /identical/);
  await s.stop();
});

for (const fmt of ['qcow2', 'vdi', 'vmdk', 'vpc', 'vhdx']) {
  test(`an export serving a ${fmt} file's bytes is probed as ${fmt} and copies as the file does`, T, async () => {
    const img = join(dir, `disk.${fmt}`);
    run('qemu-img', ['convert', '-O', fmt, disk, img]);
    const fileCopy = join(dir, `file-copy.${fmt}`);
    await sparsifyCopy({ input: img, output: fileCopy });
    const s = await servers.serve(qemuNbd(dir, img, { format: 'raw' }));
    const out = join(dir, `nbd-copy.${fmt}`);
    const r = await sparsifyCopy({ input: s.uri, output: out });
    assert.equal(r.outputFormat, fmt);
    assert.match(run('qemu-img', ['compare', '-f', fmt, '-F', fmt, out, fileCopy]), /identical/);
    assert.match(run('qemu-img', ['compare', '-f', fmt, '-F', 'raw', out, ref]), /identical/);
    if (fmt === 'qcow2') run('qemu-img', ['check', out]);
    await s.stop();
  });
}

const NBDKIT_CASES: Array<[string, string[]]> = [
  ['without structured replies (--no-sr)', ['--no-sr', 'file', disk]],
  ['without block status (noextents)', ['--filter=noextents', 'file', disk]],
  ['with a 64 KiB minimum block size (blocksize-policy, errors on smaller requests)', ['--filter=blocksize-policy', 'file', disk, 'blocksize-minimum=65536', 'blocksize-preferred=65536', 'blocksize-maximum=4194304', 'blocksize-error-policy=error']],
];
for (const [what, args] of NBDKIT_CASES) {
  test(`nbdkit ${what}: the copy equals the file copy`, T, async () => {
    const s = await servers.serve(nbdkit(dir, args.map((a) => (a === disk ? disk : a))));
    const out = join(dir, 'from-nbdkit.raw');
    await sparsifyCopy({ input: s.uri, output: out });
    assert.equal(fileSha(out), fileSha(ref));
    checkGuest(out);
    await s.stop();
  });
}

test('--analyze over NBD reads only metadata, and -v says how much', T, async () => {
  const s = await servers.serve(qemuNbd(dir, disk, { format: 'raw' }));
  const r = sparsify(['-v', '--analyze', s.uri]);
  await s.stop();
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Reclaimable/);
  const m = /read (\d+) bytes of the export's (\d+)/.exec(r.stderr);
  assert.ok(m, r.stderr);
  assert.ok(Number(m[1]) > 0 && Number(m[1]) < 2 << 20, `read ${m[1]} bytes`);
  assert.equal(Number(m[2]), 96 << 20);
});

test('a server that sets CAN_MULTI_CONN (qemu-nbd -e 4) gets one connection per core (at most 4), or as many as asked, and the copy is the same', T, async () => {
  const s = await servers.serve(qemuNbd(dir, disk, { format: 'raw', extra: ['-e', '4'] }));
  const c = await NbdClient.connect(parseNbdUri(s.uri));
  try {
    assert.equal(c.connections, Math.min(4, availableParallelism()));
  } finally {
    await c.close();
  }
  const c4 = await NbdClient.connect(parseNbdUri(s.uri), undefined, 4);
  try {
    assert.equal(c4.connections, 4);
    const a = Buffer.alloc(3 << 20);
    const b = Buffer.alloc(a.length);
    await c4.pread(a, 5 << 20);
    readFileSync(disk).copy(b, 0, 5 << 20, (5 << 20) + b.length);
    assert.ok(a.equals(b), 'reads spread over 4 connections return the disk\'s bytes');
  } finally {
    await c4.close();
  }
  const one = await servers.serve(qemuNbd(dir, disk, { format: 'raw' }));
  const c1 = await NbdClient.connect(parseNbdUri(one.uri));
  try {
    assert.equal(c1.connections, 1, 'qemu-nbd -e 1 (the default) does not set CAN_MULTI_CONN');
  } finally {
    await c1.close();
  }
  const out = join(dir, 'multi.raw');
  await sparsifyCopy({ input: s.uri, output: out });
  assert.equal(fileSha(out), fileSha(ref));
  await s.stop();
  await one.stop();
});
