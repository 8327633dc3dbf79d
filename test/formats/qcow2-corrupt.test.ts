/**
 * Malformed qcow2 images: each is refused with a SparsifyError (CorruptError for broken structures)
 * whose message names the file, the structure and its offset. Nothing crashes or hangs, including
 * under random damage to the metadata.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, ftruncateSync, readFileSync, copyFileSync, truncateSync } from 'node:fs';
import { deflateRawSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import zstd from 'zstd-napi/binding.js';
import { BlockFile } from '../../src/io/file.js';
import { CorruptError, SparsifyError } from '../../src/io/errors.js';
import type { OpenContext } from '../../src/formats/types.js';
import { qcow2Driver } from '../../src/formats/qcow2/index.js';
import { tempDir, run, haveTool } from '../helpers/fixtures.js';

const skip = !haveTool('qemu-img') ? 'qemu-img not installed' : false;
const MiB = 1 << 20;

const ctx: OpenContext = {
  openBacking: () => Promise.reject(new SparsifyError('no backing files in these tests')),
};

function patch(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** Open, read every byte and walk the extents: what a sparsify run would do. */
async function useImage(path: string): Promise<void> {
  const file = await BlockFile.open(path);
  const img = await qcow2Driver.open(file, ctx).catch(async (e: unknown) => {
    await file.close(); // a failed open leaves the file to its opener
    throw e;
  });
  try {
    // Damage may claim a huge disk: read the first 4 MiB and the last 64 KiB.
    const head = Buffer.alloc(Math.min(img.virtualSize, 4 * MiB));
    await img.read(head, 0);
    const tail = Buffer.alloc(Math.min(img.virtualSize, 65536));
    await img.read(tail, img.virtualSize - tail.length);
    for await (const e of img.extents(0, img.virtualSize)) void e;
  } finally {
    await img.close();
  }
}

/** A small qcow2 image (64 KiB clusters) made by qemu-img, and the offsets of its tables. */
function baseImage(dir: string, name: string, extra: string[] = []): { path: string; l1: number; l2: number; refTable: number } {
  const raw = join(dir, 'src.raw');
  const fd = openSync(raw, 'w');
  ftruncateSync(fd, 2 * MiB);
  const text = Buffer.from('compressible text for compressed clusters; '.repeat(10_000)).subarray(0, MiB);
  writeSync(fd, text, 0, text.length, 0);
  writeSync(fd, randomBytes(300_000), 0, 300_000, MiB + 4096);
  closeSync(fd);
  const path = join(dir, name);
  run('qemu-img', ['convert', '-O', 'qcow2', ...extra, raw, path]);
  const h = readFileSync(path);
  const l1 = Number(h.readBigUInt64BE(40));
  const l2 = Number(h.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  return { path, l1, l2, refTable: Number(h.readBigUInt64BE(48)) };
}

test('qcow2 corrupt: each malformed image gets a clear error', { timeout: 300_000, skip }, async (t) => {
  const d = tempDir();
  try {
    const base = baseImage(d.dir, 'base.qcow2');
    await useImage(base.path); // the pristine image is fine
    const size = readFileSync(base.path).length;
    const variant = (name: string, change: (p: string) => void): string => {
      const p = join(d.dir, `${name}.qcow2`);
      copyFileSync(base.path, p);
      change(p);
      return p;
    };
    const expectError = async (p: string, re: RegExp, cls: typeof SparsifyError = SparsifyError): Promise<void> => {
      await assert.rejects(useImage(p), (e: Error) => {
        assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.name}: ${e.message}`);
        assert.match(e.message, re);
        assert.ok(e.message.includes(p), `message names the file: ${e.message}`);
        return true;
      });
    };

    await t.test('empty and truncated headers', async () => {
      await expectError(variant('empty', (p) => truncateSync(p, 0)), /too short/, CorruptError);
      await expectError(variant('short', (p) => truncateSync(p, 100)), /too short for a version 3 header/, CorruptError);
    });
    await t.test('file truncated inside the data', async () => {
      const p = variant('trunc', (p) => truncateSync(p, base.l2 + 4096));
      await expectError(p, /beyond end of file/, SparsifyError);
    });
    await t.test('L1 table offset past end of file', async () => {
      const p = variant('l1eof', (p) => patch(p, 40, u64(0x1000000n)));
      await expectError(p, /L1 table at 0x1000000 .*lies beyond end of file/, CorruptError);
    });
    await t.test('L1 table not cluster aligned', async () => {
      await expectError(variant('l1align', (p) => patch(p, 40, u64(BigInt(base.l1 + 512)))), /L1 table at .* not aligned/, CorruptError);
    });
    await t.test('L2 table overlapping the header', async () => {
      const p = variant('l2hdr', (p) => patch(p, base.l1, u64(0x8000000000000200n)));
      await expectError(p, /L2 table at 0x200 .*overlaps the image header/, CorruptError);
    });
    await t.test('L2 table overlapping the refcount table', async () => {
      const p = variant('l2ref', (p) => patch(p, base.l1, u64(0x8000000000000000n | BigInt(base.refTable))));
      await expectError(p, /overlaps the refcount table/, CorruptError);
    });
    await t.test('L2 table past end of file', async () => {
      const far = 0x4000000;
      const p = variant('l2eof', (p) => patch(p, base.l1, u64(0x8000000000000000n | BigInt(far))));
      await expectError(p, new RegExp(`qcow2: L2 table at 0x4000000 lies beyond end of file \\(size 0x${size.toString(16)}\\)`), CorruptError);
    });
    await t.test('data cluster past end of file', async () => {
      const p = variant('dataeof', (p) => patch(p, base.l2, u64(0x8000000010000000n)));
      await expectError(p, /data cluster at 0x10000000 \(guest offset 0x0\) lies beyond end of file/, CorruptError);
    });
    await t.test('refcount table past end of file', async () => {
      await expectError(variant('refeof', (p) => patch(p, 48, u64(0x2000000n))), /refcount table at 0x2000000/, CorruptError);
    });
    await t.test('unknown incompatible feature bit', async () => {
      const p = variant('incompat', (p) => patch(p, 72, u64(1n << 20n)));
      await expectError(p, /unsupported incompatible features: bit 20/);
    });
    await t.test('corrupt bit', async () => {
      await expectError(variant('corruptbit', (p) => patch(p, 72, u64(2n))), /marked corrupt/);
    });
    await t.test('crypt_method=1', async () => {
      await expectError(variant('aes', (p) => patch(p, 32, u32(1))), /encrypted qcow2 images are not supported \(crypt_method 1\)/);
    });
    await t.test('cluster_bits out of range', async () => {
      await expectError(variant('cbits', (p) => patch(p, 20, u32(40))), /cluster_bits 40 out of range/, CorruptError);
    });
    await t.test('L1 table too small for the virtual size', async () => {
      await expectError(variant('bigsize', (p) => patch(p, 24, u64(1n << 40n))), /L1 table .* is too small/, CorruptError);
    });
    await t.test('version 4', async () => {
      await expectError(variant('v4', (p) => patch(p, 4, u32(4))), /qcow2 version 4 is not supported/);
    });
  } finally {
    d.cleanup();
  }
});

test('qcow2 corrupt: compressed clusters that do not decompress to one cluster', { timeout: 300_000, skip }, async (t) => {
  const d = tempDir();
  try {
    for (const type of ['zlib', 'zstd'] as const) {
      await t.test(type, async () => {
        const base = baseImage(d.dir, `c-${type}.qcow2`, ['-c', '-o', `compression_type=${type}`]);
        const img = readFileSync(base.path);
        const entry = img.readBigUInt64BE(base.l2);
        assert.ok(entry & (1n << 62n), 'first cluster is compressed');
        const x = 62n - (16n - 8n);
        const host = Number(entry & ((1n << x) - 1n));
        const short = Buffer.alloc(1000, 0x41);
        const stream = type === 'zlib' ? deflateRawSync(short) : (() => {
          const dst = Buffer.alloc(zstd.compressBound(short.length));
          return dst.subarray(0, zstd.compress(dst, short, 3));
        })();
        const p = join(d.dir, `short-${type}.qcow2`);
        copyFileSync(base.path, p);
        patch(p, host, stream);
        await assert.rejects(useImage(p), (e: Error) => {
          assert.ok(e instanceof CorruptError, e.message);
          assert.match(e.message, new RegExp(`compressed cluster at 0x${host.toString(16)} \\(guest offset 0x0\\) .*1000 bytes instead of 65536`));
          return true;
        });
        const g = join(d.dir, `garbage-${type}.qcow2`);
        copyFileSync(base.path, g);
        patch(g, host, Buffer.alloc(64, 0xff));
        await assert.rejects(useImage(g), (e: Error) => e instanceof CorruptError && /compressed cluster at 0x/.test(e.message));
      });
    }
  } finally {
    d.cleanup();
  }
});

test('qcow2 corrupt: random damage to metadata never crashes', { timeout: 300_000, skip }, async () => {
  const d = tempDir();
  try {
    const base = baseImage(d.dir, 'fuzz-base.qcow2', ['-c', '-o', 'cluster_size=4k']);
    const pristine = readFileSync(base.path);
    // Damage the header cluster and the first metadata clusters (tables live there).
    const metaEnd = Math.min(pristine.length, 64 * 1024);
    let seed = 42;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const p = join(d.dir, 'fuzz.qcow2');
    let refused = 0;
    for (let i = 0; i < 150; i++) {
      const img = Buffer.from(pristine);
      for (let k = 0, n = 1 + rnd(8); k < n; k++) {
        const at = rnd(metaEnd);
        img[at] = rnd(4) === 0 ? 0xff : rnd(256);
      }
      const fd = openSync(p, 'w');
      writeSync(fd, img);
      closeSync(fd);
      try {
        await useImage(p);
      } catch (e) {
        assert.ok(e instanceof SparsifyError, `iteration ${i}: ${(e as Error).stack}`);
        refused++;
      }
    }
    assert.ok(refused > 0, 'some damage is detected');
  } finally {
    d.cleanup();
  }
});
