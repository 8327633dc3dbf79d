/**
 * qcow2 writer checked by qemu: `qemu-img check` finds no errors and no leaks, `qemu-img info`
 * shows the options we asked for, `qemu-img compare` finds the image identical to its raw source,
 * and only clusters holding non-zero data are allocated.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, ftruncateSync, readFileSync, statSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { BlockFile } from '../../src/io/file.js';
import { SparsifyError } from '../../src/io/errors.js';
import { writeWith } from './format-helpers.js';
import { qcow2Driver } from '../../src/formats/qcow2/index.js';
import { tempDir, run, runStatus, haveTool } from '../helpers/fixtures.js';

const skip = !haveTool('qemu-img') ? 'qemu-img not installed' : false;
const MiB = 1 << 20;
const SIZE = 10 * MiB + 1536; // not a multiple of any cluster size

function makeSource(path: string): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, SIZE);
    const put = (off: number, buf: Buffer): void => void writeSync(fd, buf, 0, buf.length, off);
    put(4096, randomBytes(200_000));
    put(MiB + 333, randomBytes(MiB));
    // Compressible data, so compressed clusters share host clusters.
    put(3 * MiB, Buffer.from('qcow2 compressed clusters share host clusters; '.repeat(50_000)).subarray(0, 2 * MiB));
    put(6 * MiB, Buffer.alloc(MiB)); // explicit zeros: must not be allocated
    put(6 * MiB + 500_000, Buffer.from([1])); // ...except the cluster holding this byte
    put(9 * MiB - 10, randomBytes(20));
    put(SIZE - 700, randomBytes(700));
  } finally {
    closeSync(fd);
  }
}

/** Copy the raw file's data ranges (as the copy executor does: holes are never written) in odd-sized pieces. */
function writeImage(src: string, out: string, options: Record<string, string>, compress: boolean): Promise<void> {
  return writeWith(qcow2Driver, src, out, options, { compress, threads: 2 });
}

interface CheckJson {
  'check-errors': number;
  leaks?: number;
  corruptions?: number;
  'allocated-clusters': number;
  'compressed-clusters'?: number;
  'image-end-offset': number;
}

/** Guest clusters of the source holding at least one non-zero byte. */
function nonZeroClusters(src: Buffer, cs: number): number {
  let n = 0;
  for (let off = 0; off < src.length; off += cs) if (!src.subarray(off, off + cs).every((b) => b === 0)) n++;
  return n;
}

const CASES: { name: string; options: Record<string, string>; compress?: boolean; info: Record<string, unknown> }[] = [
  { name: 'defaults', options: {}, info: { 'cluster-size': 65536, compat: '1.1', 'compression-type': 'zlib', 'extended-l2': false } },
  { name: 'compat=0.10, 512 B clusters', options: { compat: '0.10', cluster_size: '512' }, info: { 'cluster-size': 512, compat: '0.10' } },
  { name: '2 MiB clusters, refcount_bits=64', options: { cluster_size: '2M', refcount_bits: '64' }, info: { 'cluster-size': 2 * MiB, 'refcount-bits': 64 } },
  { name: 'refcount_bits=1, 4k clusters', options: { refcount_bits: '1', cluster_size: '4k' }, info: { 'refcount-bits': 1 } },
  { name: 'extended_l2=on, 16k clusters', options: { extended_l2: 'on', cluster_size: '16k' }, info: { 'extended-l2': true, 'cluster-size': 16384 } },
  { name: 'lazy_refcounts=on', options: { lazy_refcounts: 'on' }, info: { 'lazy-refcounts': true } },
  { name: 'preallocation=metadata', options: { preallocation: 'metadata', cluster_size: '8k' }, info: { 'cluster-size': 8192 } },
  { name: '--compress zlib', options: {}, compress: true, info: { 'compression-type': 'zlib' } },
  { name: '--compress zstd', options: { compression_type: 'zstd' }, compress: true, info: { 'compression-type': 'zstd' } },
  { name: '--compress, 512 B clusters, refcount_bits=2', options: { cluster_size: '512', refcount_bits: '2' }, compress: true, info: { 'cluster-size': 512 } },
  { name: '--compress, extended_l2=on', options: { extended_l2: 'on', compression_type: 'zstd' }, compress: true, info: { 'extended-l2': true } },
];

test('qcow2 writer: qemu-img check, info and compare accept what we write', { timeout: 300_000, skip }, async (t) => {
  const d = tempDir();
  try {
    const src = join(d.dir, 'src.raw');
    makeSource(src);
    const srcData = readFileSync(src);
    for (const c of CASES) {
      await t.test(c.name, async () => {
        const out = join(d.dir, 'out.qcow2');
        await writeImage(src, out, c.options, c.compress ?? false);

        const check = runStatus('qemu-img', ['check', '--output=json', out]);
        assert.equal(check.status, 0, `qemu-img check failed: ${check.stdout}${check.stderr}`);
        const cj = JSON.parse(check.stdout) as CheckJson;
        assert.equal(cj['check-errors'], 0);
        assert.equal(cj.leaks ?? 0, 0, 'no leaked clusters');
        assert.equal(cj.corruptions ?? 0, 0);

        const info = JSON.parse(run('qemu-img', ['info', '--output=json', out])) as {
          format: string;
          'virtual-size': number;
          'cluster-size': number;
          'format-specific': { data: Record<string, unknown> };
        };
        assert.equal(info.format, 'qcow2');
        assert.equal(info['virtual-size'], Math.ceil(SIZE / 512) * 512);
        for (const [k, v] of Object.entries(c.info)) {
          const got = k === 'cluster-size' ? info['cluster-size'] : info['format-specific'].data[k];
          assert.deepEqual(got, v, `qemu-img info ${k}`);
        }

        const cmp = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, out]);
        assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
        assert.match(cmp.stdout, /Images are identical/);

        // Our reader agrees too (qemu above is the oracle; this keeps reader and writer in step).
        const mine = await qcow2Driver.open(await BlockFile.open(out), { openBacking: () => Promise.reject(new Error('no backing')) });
        try {
          const got = Buffer.alloc(mine.virtualSize);
          await mine.read(got, 0);
          assert.ok(got.subarray(0, SIZE).equals(srcData) && got.subarray(SIZE).every((b) => b === 0));
        } finally {
          await mine.close();
        }

        const cs = info['cluster-size'];
        if (c.options.preallocation === 'metadata') {
          assert.equal(cj['allocated-clusters'], Math.ceil(SIZE / cs));
        } else {
          // Exactly the clusters holding data are allocated: zeros and holes stay unallocated.
          assert.equal(cj['allocated-clusters'], nonZeroClusters(srcData, cs));
          // Compact: the file ends where qemu says the image ends.
          assert.equal(statSync(out).size, cj['image-end-offset']);
        }
        if (c.compress) {
          assert.ok((cj['compressed-clusters'] ?? 0) > 0, 'compressible clusters are stored compressed');
          assert.ok(statSync(out).size < 2.5 * MiB, `compressed output is small (${statSync(out).size})`);
        }
      });
    }
  } finally {
    d.cleanup();
  }
});

test('qcow2 writer: compressed output is deterministic whatever the worker timing', { timeout: 300_000, skip }, async () => {
  const d = tempDir();
  try {
    const src = join(d.dir, 'src.raw');
    makeSource(src);
    const a = join(d.dir, 'a.qcow2');
    const b = join(d.dir, 'b.qcow2');
    await writeImage(src, a, {}, true);
    await writeImage(src, b, {}, true);
    assert.ok(readFileSync(a).equals(readFileSync(b)));
  } finally {
    d.cleanup();
  }
});

test('qcow2 writer: a 1 TiB virtual disk with sparse writes stays small and valid', { timeout: 300_000, skip }, async () => {
  const d = tempDir();
  try {
    const out = join(d.dir, 'big.qcow2');
    const T = 2 ** 40;
    const w = await qcow2Driver.createWriter!(out, T, new Map(), { compress: false, threads: 1 });
    const chunk = Buffer.alloc(100_000, 0xab);
    for (const off of [0, 5 * MiB + 7, T / 2, T - chunk.length]) await w.write(chunk, off);
    await w.finish();
    const check = runStatus('qemu-img', ['check', out]);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    assert.ok(statSync(out).size < 4 * MiB);
    const got = run('qemu-io', ['-r', '-c', `read -P 0xab ${T - 100_000} 100000`, '-c', `read -P 0 ${T / 2 + 100_000} 4096`, out]);
    assert.doesNotMatch(got, /Pattern verification failed/);
  } finally {
    d.cleanup();
  }
});

test('qcow2 writer: option errors name the valid choices', { timeout: 300_000 }, async () => {
  const d = tempDir();
  try {
    const out = join(d.dir, 'x.qcow2');
    const create = (o: Record<string, string>, compress = false) =>
      qcow2Driver.createWriter!(out, MiB, new Map(Object.entries(o)), { compress, threads: 1 });
    await assert.rejects(create({ bogus: '1' }), (e: Error) => e instanceof SparsifyError && /cluster_size/.test(e.message) && /bogus/.test(e.message));
    await assert.rejects(create({ cluster_size: '3000' }), /cluster_size.*power of two/);
    await assert.rejects(create({ cluster_size: '4M' }), SparsifyError);
    await assert.rejects(create({ compat: '2.0' }), /valid: 0.10, v2, 1.1, v3/);
    await assert.rejects(create({ compat: '0.10', extended_l2: 'on' }), /compat=1.1/);
    await assert.rejects(create({ compat: '0.10', compression_type: 'zstd' }), /compat=1.1/);
    await assert.rejects(create({ extended_l2: 'on', cluster_size: '4k' }), /16k/);
    await assert.rejects(create({ refcount_bits: '3' }), /1, 2, 4, 8, 16, 32, 64/);
    await assert.rejects(create({ preallocation: 'full' }), /off, metadata/);
    await assert.rejects(create({ lazy_refcounts: 'maybe' }), /on, off/);
    await assert.rejects(create({ preallocation: 'metadata' }, true), /--compress/);
    assert.ok(qcow2Driver.createOptions?.has('compression_type'));
  } finally {
    d.cleanup();
  }
});
