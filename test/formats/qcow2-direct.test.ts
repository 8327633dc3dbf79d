/**
 * The qcow2 writer's O_DIRECT path (src/formats/qcow2/direct-output.ts), checked by qemu: the same
 * image written with O_DIRECT (where the temp folder's filesystem takes it) and through the page
 * cache alone (as it is while I/O observers record writes: the power-cut tests must see them all)
 * is the same file byte for byte; qemu-img compare finds it identical to its raw source and
 * qemu-img check finds it clean. Cluster sizes and compression that give unaligned runs mix both
 * paths in one file; data in buffers aligned as the copy executor aligns them goes direct from
 * them, unstaged, several at once. The direct path must really be taken, and never while observed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, readFileSync, rmSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { BlockFile } from '../../src/io/file.js';
import { observeIo } from '../../src/io/observer.js';
import { RawImage } from '../../src/formats/raw.js';
import { qcow2Driver } from '../../src/formats/qcow2/index.js';
import type { Qcow2Writer } from '../../src/formats/qcow2/writer.js';
import { assertQemuAgrees } from './format-helpers.js';
import { alignedBuffer, DIRECT_ALIGN } from '../../src/io/aligned-buffer.js';
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

/** Does the folder's filesystem accept O_DIRECT? */
async function takesDirect(dir: string): Promise<boolean> {
  const probe = join(dir, 'direct-probe');
  try {
    await (await open(probe, fsConstants.O_CREAT | fsConstants.O_WRONLY | fsConstants.O_DIRECT)).close();
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { force: true });
  }
}

/**
 * Write the source's data ranges in odd-sized pieces; returns the bytes written direct. `lend`:
 * from buffers placed as the copy executor places them (a disk offset's skew from 4 KiB kept in
 * memory), so whole clusters go direct from them, not staged.
 */
async function write(src: string, out: string, options: Record<string, string>, compress: boolean, lend: boolean): Promise<number> {
  const img = await RawImage.open(await BlockFile.open(src));
  try {
    const w = (await qcow2Driver.createWriter!(out, img.virtualSize, new Map(Object.entries(options)), { compress, threads: 2 })) as Qcow2Writer;
    try {
      const step = 3 * MiB + 4096 * 3 + 512;
      const inFlight: Array<Promise<void>> = [];
      for await (const e of img.extents(0, img.virtualSize)) {
        if (e.kind !== 'data') continue;
        for (let off = e.start; off < e.end; off += step) {
          const n = Math.min(step, e.end - off);
          const b = lend ? alignedBuffer(n + DIRECT_ALIGN).subarray(off % DIRECT_ALIGN, (off % DIRECT_ALIGN) + n) : Buffer.alloc(n);
          await img.read(b, off);
          // Lent buffers are not awaited one by one: their direct writes run side by side.
          if (lend) inFlight.push(w.write(b, off));
          else await w.write(b, off);
        }
      }
      await Promise.all(inFlight);
      await w.finish();
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w.bytesWrittenDirect;
  } finally {
    await img.close();
  }
}

/** `minDirect`: the least data that must go direct (0: none may). */
const CASES: Array<{ name: string; options: Record<string, string>; compress: boolean; minDirect: number; lend?: boolean }> = [
  { name: 'defaults', options: {}, compress: false, minDirect: 16 * MiB },
  { name: 'defaults, written from aligned buffers', options: {}, compress: false, minDirect: 16 * MiB, lend: true },
  { name: '2 MiB clusters, written from aligned buffers', options: { cluster_size: '2M' }, compress: false, minDirect: 16 * MiB, lend: true },
  { name: 'with preallocation=metadata, from aligned buffers', options: { preallocation: 'metadata' }, compress: false, minDirect: 0, lend: true },
  // 512-byte L2 tables and refcount blocks break the runs: some staged runs are aligned, some not.
  { name: '512-byte clusters (runs not 4 KiB aligned)', options: { cluster_size: '512' }, compress: false, minDirect: 4096 },
  { name: '2 MiB clusters', options: { cluster_size: '2M' }, compress: false, minDirect: 16 * MiB },
  { name: 'compressed', options: {}, compress: true, minDirect: 0 },
];

const skip = !haveTool('qemu-img') ? 'qemu-img not installed' : false;

test('qcow2 writer: O_DIRECT and page-cache writes give the same image, which qemu finds identical to its source', { skip, timeout: 120_000 }, async (t) => {
  const { dir, cleanup } = tempDir();
  try {
    if (!(await takesDirect(dir))) return t.skip(`${dir} does not take O_DIRECT`);
    const src = join(dir, 'src.raw');
    makeSource(src);
    for (const c of CASES) {
      const onDisk = join(dir, 'direct.qcow2');
      const onShm = join(dir, 'cached.qcow2');
      const direct = await write(src, onDisk, c.options, c.compress, c.lend ?? false);
      let seen = 0;
      const stop = observeIo((path, op) => {
        if (path === onShm && op.kind === 'write') seen += op.data.length;
      });
      let cached: number;
      try {
        cached = await write(src, onShm, c.options, c.compress, c.lend ?? false);
      } finally {
        stop();
      }
      assert.equal(cached, 0, `${c.name}: nothing goes direct while observed`);
      assert.ok(seen >= 8 * MiB, `${c.name}: the observer saw only ${seen} bytes written`);
      if (c.minDirect) assert.ok(direct >= c.minDirect, `${c.name}: only ${direct} bytes went direct`);
      assert.ok(readFileSync(onDisk).equals(readFileSync(onShm)), `${c.name}: the two images differ`);
      assertQemuAgrees(src, onDisk, 'qcow2', true);
      rmSync(onDisk);
      rmSync(onShm);
    }
  } finally {
    cleanup();
  }
});
