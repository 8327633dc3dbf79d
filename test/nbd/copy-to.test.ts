/**
 * Copy mode into an NBD export: the export ends up holding the same guest as a copy to a file
 * (checked byte for byte and by qemu-img compare), whatever garbage it held before; the parts
 * not kept are zeroed by WRITE_ZEROES (holes in the file behind qemu-nbd --discard=unmap), or
 * written as zeros with a warning when the server cannot zero. Refusals come before any write.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { tempDir, run, sha256, releaseAll, garbageFile, allocatedBytes } from '../helpers/fixtures.js';
import { buildDisk } from '../helpers/disk-builder.js';
import { sparsifyCopy } from '../../src/operations/copy.js';
import { qemuNbd, nbdkit, ServerPool } from './servers.js';

const T = { timeout: 120_000 };
const MiB = 1 << 20;
let dir = '';
let cleanup = (): void => undefined;
const servers = new ServerPool();
let disk = '';
let ref = '';

before(async () => {
  ({ dir, cleanup } = tempDir('sparsify-nbd-to-'));
  disk = join(dir, 'disk.qcow2');
  const raw = join(dir, 'disk.raw');
  buildDisk(raw, { sizeMiB: 48, label: 'gpt', garbage: true, workDir: dir, parts: [{ sizeMiB: 40, ext: { type: 'ext4', files: { 'a/b': Buffer.alloc(3 * MiB, 7) } } }] });
  run('qemu-img', ['convert', '-O', 'qcow2', raw, disk]);
  ref = join(dir, 'ref.raw');
  await sparsifyCopy({ input: disk, output: ref, convert: 'raw' });
});

after(() => releaseAll(...servers.stops, () => cleanup()));

test('into a raw file full of garbage behind qemu-nbd --discard=unmap: the same bytes as the file copy, the rest made holes', T, async () => {
  const target = join(dir, 'target.raw');
  garbageFile(target, 48 * MiB);
  const s = await servers.serve(qemuNbd(dir, target, { format: 'raw', writable: true, extra: ['--discard=unmap'] }));
  const r = await sparsifyCopy({ input: disk, output: s.uri });
  await s.stop();
  assert.equal(r.outputFormat, 'raw');
  assert.equal(sha256(readFileSync(target)), sha256(readFileSync(ref)));
  assert.ok(allocatedBytes(target) <= allocatedBytes(ref) + MiB, `${allocatedBytes(target)} allocated, the file copy ${allocatedBytes(ref)}`);
  assert.ok(Math.abs(r.outputAllocated - allocatedBytes(target)) <= MiB);
});

test('into a qcow2 guest view (qemu-nbd -f qcow2): qemu-img compare and check', T, async () => {
  const target = join(dir, 'target.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', target, '48M']);
  const s = await servers.serve(qemuNbd(dir, target, { format: 'qcow2', writable: true }));
  await sparsifyCopy({ input: disk, output: s.uri });
  await s.stop();
  run('qemu-img', ['check', target]);
  assert.match(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', target, ref]), /identical/);
});

test('a server without WRITE_ZEROES (nbdkit nozero): zeros are written, with a warning, and the result is the same', T, async () => {
  const target = join(dir, 'target-nozero.raw');
  garbageFile(target, 48 * MiB);
  const s = await servers.serve(nbdkit(dir, ['--filter=nozero', 'file', target]));
  const warnings: string[] = [];
  await sparsifyCopy({ input: disk, output: s.uri, onWarning: (w) => warnings.push(w) });
  await s.stop();
  assert.equal(sha256(readFileSync(target)), sha256(readFileSync(ref)));
  assert.ok(warnings.some((w) => /offers no WRITE_ZEROES/.test(w)), warnings.join('\n'));
});

test('refusals before anything is written: a smaller export, another output format', T, async () => {
  const small = join(dir, 'small.raw');
  garbageFile(small, 16 * MiB);
  const before = sha256(readFileSync(small));
  const s = await servers.serve(qemuNbd(dir, small, { format: 'raw', writable: true }));
  await assert.rejects(sparsifyCopy({ input: disk, output: s.uri }), /holds 16777216 bytes, the disk needs 50331648/);
  await assert.rejects(sparsifyCopy({ input: disk, output: s.uri, convert: 'qcow2' }), /writing a qcow2 image into an NBD export is not supported yet/);
  await s.stop();
  assert.equal(sha256(readFileSync(small)), before);
});

test('64 GiB exports: block status and zeroing are split into 32-bit requests, and zeros are never sent as data', T, async () => {
  const from = await servers.serve(nbdkit(dir, ['memory', 'size=64G']));
  // noextents: the target cannot say it is zero already, so all 64 GiB must be zeroed.
  const into = await servers.serve(nbdkit(dir, ['--filter=noextents', 'memory', 'size=64G']));
  const t0 = Date.now();
  const r = await sparsifyCopy({ input: from.uri, output: into.uri });
  assert.ok(Date.now() - t0 < 60_000, 'sending 64 GiB of zeros would take minutes');
  assert.equal(r.bytesWritten, 0);
  assert.equal(r.map.virtualSize, 64 * 2 ** 30);
  await from.stop();
  await into.stop();
});
