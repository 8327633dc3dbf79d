/**
 * The qcow2 writer's lent runs (OutputStream.appendFrom: whole data clusters written straight from
 * the caller's buffer, several queued at once, as the copy executor gives them), checked by qemu:
 * the same image written from buffers left in flight and one write at a time is the same file byte
 * for byte; qemu-img compare finds it identical to its raw source and qemu-img check finds it clean.
 * Cluster sizes and compression mix lent and staged runs in one file. An I/O observer (the
 * power-cut tests' recorder) sees every byte written either way.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, readFileSync, rmSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { observeIo } from '../../src/io/observer.js';
import { qcow2Driver } from '../../src/formats/qcow2/index.js';
import { assertQemuAgrees, writeWith } from './format-helpers.js';
import { tempDir, haveTool } from '../helpers/fixtures.js';

const MiB = 1 << 20;
const SIZE = 24 * MiB + 512;

function makeSource(path: string): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, SIZE);
    const put = (off: number, buf: Buffer): void => void writeSync(fd, buf, 0, buf.length, off);
    put(4096, randomBytes(9 * MiB + 123));
    put(10 * MiB, Buffer.from('compressible, so compressed clusters land at unaligned offsets; '.repeat(70_000)).subarray(0, 3 * MiB));
    put(14 * MiB + 700, randomBytes(5 * MiB));
    put(21 * MiB, Buffer.alloc(MiB)); // written zeros: left unallocated
    put(SIZE - 1000, randomBytes(1000));
  } finally {
    closeSync(fd);
  }
}

/** Long pieces, so that whole-cluster runs are long enough to be lent. */
const STEP = 3 * MiB + 4096 * 3 + 512;

const write = (src: string, out: string, options: Record<string, string>, compress: boolean, inFlight: boolean): Promise<void> =>
  writeWith(qcow2Driver, src, out, options, { compress, threads: 2 }, undefined, { step: STEP, inFlight });

const CASES: Array<{ name: string; options: Record<string, string>; compress: boolean }> = [
  { name: 'defaults', options: {}, compress: false },
  { name: '2 MiB clusters', options: { cluster_size: '2M' }, compress: false },
  { name: 'preallocation=metadata', options: { preallocation: 'metadata' }, compress: false },
  // 512-byte L2 tables and refcount blocks break the runs: short runs are staged, long ones lent.
  { name: '512-byte clusters', options: { cluster_size: '512' }, compress: false },
  { name: 'compressed', options: {}, compress: true },
];

const skip = !haveTool('qemu-img') ? 'qemu-img not installed' : false;

test('qcow2 writer: runs lent in flight and written one at a time give the same image, which qemu finds identical to its source', { skip, timeout: 120_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    makeSource(src);
    for (const c of CASES) {
      const lent = join(dir, 'lent.qcow2');
      const serial = join(dir, 'serial.qcow2');
      let seen = 0;
      const stop = observeIo((path, op) => {
        if (path === lent && op.kind === 'write') seen += op.data.length;
      });
      try {
        await write(src, lent, c.options, c.compress, true);
      } finally {
        stop();
      }
      await write(src, serial, c.options, c.compress, false);
      assert.ok(seen >= 8 * MiB, `${c.name}: the observer saw only ${seen} bytes written`);
      assert.ok(readFileSync(lent).equals(readFileSync(serial)), `${c.name}: the two images differ`);
      assertQemuAgrees(src, lent, 'qcow2', true);
      rmSync(lent);
      rmSync(serial);
    }
  } finally {
    cleanup();
  }
});
