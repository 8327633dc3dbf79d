/**
 * qcow2 reader against qemu-img: every byte we read must equal `qemu-img convert -O raw`, and our
 * data extents must be exactly the ranges `qemu-img map` calls data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { openSync, writeSync, closeSync, ftruncateSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { BlockFile } from '../../src/io/file.js';
import { Extents } from '../../src/io/extents.js';
import { RawImage } from '../../src/formats/raw.js';
import type { DiskImage, ImageExtent, OpenContext } from '../../src/formats/types.js';
import { qcow2Driver } from '../../src/formats/qcow2/index.js';
import { tempDir, run, haveTool } from '../helpers/fixtures.js';

const skip = !haveTool('qemu-img') || !haveTool('qemu-io') ? 'qemu-img/qemu-io not installed' : false;
const MiB = 1 << 20;
const SIZE = 12 * MiB;

/** Opens backing files as the lead's opener will: relative to the referrer, qcow2 or raw by magic. */
const ctx: OpenContext = {
  async openBacking(path, format, referrer) {
    const full = path.startsWith('/') ? path : join(referrer.replace(/\/[^/]*$/, ''), path);
    const file = await BlockFile.open(full);
    const head = Buffer.alloc(Math.min(file.size, 512));
    await file.readExact(head, 0);
    if (format === 'qcow2' || (format === undefined && qcow2Driver.probe(head))) return qcow2Driver.open(file, ctx);
    return RawImage.open(file);
  },
};

async function openImage(path: string): Promise<DiskImage> {
  return qcow2Driver.open(await BlockFile.open(path), ctx);
}

/**
 * A raw disk with incompressible data, compressible text, explicit zeros and holes, with edges
 * that fall inside clusters of every size we test.
 */
function makeSource(path: string): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, SIZE);
    const put = (off: number, buf: Buffer): void => void writeSync(fd, buf, 0, buf.length, off);
    put(0, randomBytes(100_000));
    put(MiB, randomBytes(3 * MiB));
    const text = Buffer.from('All work and no play makes Jack a dull boy. '.repeat(60_000)).subarray(0, 2 * MiB + 777);
    put(4 * MiB + 300, text);
    put(7 * MiB, Buffer.alloc(256 * 1024)); // written zeros
    put(8 * MiB + 4096 + 17, randomBytes(70_000));
    put(10 * MiB - 512, randomBytes(512));
    put(SIZE - 5000, randomBytes(5000));
  } finally {
    closeSync(fd);
  }
}

/** Our view of the whole disk, read with several reads in flight. */
async function readAll(img: DiskImage): Promise<Buffer> {
  const out = Buffer.alloc(img.virtualSize);
  const chunk = 768 * 1024 + 512; // not a multiple of any cluster size
  const jobs: Promise<void>[] = [];
  for (let off = 0; off < img.virtualSize; off += chunk) {
    jobs.push(img.read(out.subarray(off, Math.min(off + chunk, img.virtualSize)), off));
  }
  await Promise.all(jobs);
  return out;
}

async function extentsOf(img: DiskImage, start = 0, end = img.virtualSize): Promise<ImageExtent[]> {
  const all: ImageExtent[] = [];
  for await (const e of img.extents(start, end)) all.push(e);
  return all;
}

function qemuDataRanges(path: string): Extents {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', path], { cwd: dirname(path) })) as { start: number; length: number; data: boolean }[];
  return new Extents(map.filter((m) => m.data).map((m) => ({ start: m.start, end: m.start + m.length })));
}

/** The checks every image gets: bytes equal qemu's, extents well-formed and matching qemu-img map. */
async function checkImage(path: string, dir: string): Promise<DiskImage> {
  const expectedPath = join(dir, 'expected.raw');
  run('qemu-img', ['convert', '-O', 'raw', path, expectedPath], { cwd: dir });
  const expected = readFileSync(expectedPath);
  const img = await openImage(path);
  try {
    await verify(img, path, expected);
  } catch (e) {
    await img.close();
    throw e;
  }
  return img;
}

async function verify(img: DiskImage, path: string, expected: Buffer): Promise<void> {
  assert.equal(img.virtualSize, expected.length);
  const got = await readAll(img);
  assert.ok(got.equals(expected), `${path}: contents differ from qemu-img convert`);

  // Unaligned reads, many in flight, must agree too.
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      const off = rnd(img.virtualSize - 1);
      const len = 1 + rnd(Math.min(300_000, img.virtualSize - off));
      const b = Buffer.alloc(len);
      await img.read(b, off);
      assert.ok(b.equals(expected.subarray(off, off + len)), `${path}: read at ${off}+${len} differs`);
    }),
  );

  const ext = await extentsOf(img);
  let pos = 0;
  for (const e of ext) {
    assert.equal(e.start, pos, 'extents must be contiguous');
    assert.ok(e.end > e.start);
    pos = e.end;
  }
  assert.equal(pos, img.virtualSize);
  for (let i = 1; i < ext.length; i++) assert.notEqual(ext[i]!.kind, ext[i - 1]!.kind, 'adjacent extents of one kind are merged');
  const ours = new Extents(ext.filter((e) => e.kind === 'data'));
  assert.deepEqual(ours.toArray(), qemuDataRanges(path).toArray(), `${path}: data extents differ from qemu-img map`);
  // Anything not data must read as zero.
  for (const e of ext) if (e.kind !== 'data') assert.ok(expected.subarray(e.start, e.end).every((b) => b === 0));

  // A sub-range query starts and ends exactly where asked.
  const [a, b] = [Math.floor(img.virtualSize * 0.1) + 1, Math.floor(img.virtualSize * 0.7) + 3];
  const sub = await extentsOf(img, a, b);
  assert.equal(sub[0]!.start, a);
  assert.equal(sub[sub.length - 1]!.end, b);
}

const VARIANTS: { name: string; args: string[] }[] = [
  { name: 'compat=0.10, 512 B clusters', args: ['-o', 'compat=0.10,cluster_size=512'] },
  { name: 'compat=1.1, 4 KiB clusters', args: ['-o', 'compat=1.1,cluster_size=4k'] },
  { name: 'default (64 KiB)', args: [] },
  { name: '2 MiB clusters, refcount_bits=1', args: ['-o', 'cluster_size=2M,refcount_bits=1'] },
  { name: 'compressed zlib', args: ['-c', '-o', 'compression_type=zlib'] },
  { name: 'compressed zstd', args: ['-c', '-o', 'compression_type=zstd'] },
  { name: 'compressed zlib, 4 KiB clusters', args: ['-c', '-o', 'cluster_size=4k'] },
  { name: 'compressed zstd, 2 MiB clusters', args: ['-c', '-o', 'compression_type=zstd,cluster_size=2M'] },
  { name: 'extended_l2, 32 KiB clusters', args: ['-o', 'extended_l2=on,cluster_size=32k'] },
  { name: 'preallocation=metadata', args: ['-o', 'preallocation=metadata'] },
];

test('qcow2 reader: images made by qemu-img convert read back exactly', { timeout: 300_000, skip }, async (t) => {
  const d = tempDir();
  try {
    const src = join(d.dir, 'src.raw');
    makeSource(src);
    for (const v of VARIANTS) {
      await t.test(v.name, async () => {
        const img = join(d.dir, 'img.qcow2');
        run('qemu-img', ['convert', '-O', 'qcow2', ...v.args, src, img]);
        const image = await checkImage(img, d.dir);
        try {
          await assert.rejects(image.read(Buffer.alloc(10), SIZE - 5));
          const layers = image.layers();
          assert.equal(layers.length, 1);
          assert.equal(layers[0]!.format, 'qcow2');
          assert.ok(layers[0]!.allocatedBytes > 0);
        } finally {
          await image.close();
        }
      });
    }
  } finally {
    d.cleanup();
  }
});

test('qcow2 reader: extended L2 subclusters (partial allocation, zero subclusters) over a backing file', { timeout: 300_000, skip }, async () => {
  const d = tempDir();
  try {
    const base = join(d.dir, 'base.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', base, '4M']);
    run('qemu-io', ['-c', 'write -P 0x11 0 4M', base]);
    const top = join(d.dir, 'top.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', '-b', 'base.qcow2', '-F', 'qcow2', top]);
    // 2 KiB subclusters: allocate some, zero others, leave the rest to the backing file.
    run('qemu-io', [
      '-c', 'write -P 0x22 2k 2k',
      '-c', 'write -P 0x33 70k 5k',
      '-c', 'write -z 130k 4k',
      '-c', 'write -P 0x44 1M 64k',
      '-c', 'write -z 2M 64k',
      '-c', 'discard 3M 64k',
      top,
    ]);
    const img = await checkImage(top, d.dir);
    try {
      const ext = await extentsOf(img, 0, 256 * 1024);
      // The backing file holds data everywhere, so the only zeros are the ones written in the top layer.
      assert.deepEqual(
        ext.filter((e) => e.kind === 'zero').map((e) => [e.start, e.end]),
        [[130 * 1024, 134 * 1024]],
      );
      assert.equal(img.layers().length, 2);
    } finally {
      await img.close();
    }
  } finally {
    d.cleanup();
  }
});

test('qcow2 reader: 3-layer backing chain with writes, zero writes and discards', { timeout: 300_000, skip }, async () => {
  const d = tempDir();
  try {
    const src = join(d.dir, 'src.raw');
    makeSource(src);
    const base = join(d.dir, 'base.qcow2');
    run('qemu-img', ['convert', '-O', 'qcow2', '-o', 'cluster_size=4k', src, base]);
    const mid = join(d.dir, 'mid.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid]);
    run('qemu-io', ['-c', 'write -P 0x55 512k 1M', '-c', 'write -z 1536k 1M', '-c', 'discard 4M 1M', '-c', 'write -P 0x66 9M 3k', mid]);
    // The top layer is larger than its backing chain: past 12 MiB it reads as zero.
    const top = join(d.dir, 'top.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=128k', '-b', 'mid.qcow2', '-F', 'qcow2', top, '16M']);
    run('qemu-io', [
      '-c', 'write -P 0x77 100k 300k',
      '-c', 'write -z 6M 256k',
      '-c', 'discard 1M 256k',
      '-c', 'write -P 0x88 13M 128k',
      '-c', 'write -c -P 0x99 8M 128k',
      top,
    ]);
    const img = await checkImage(top, d.dir);
    try {
      const layers = img.layers();
      assert.deepEqual(layers.map((l) => l.path.replace(/.*\//, '')), ['top.qcow2', 'mid.qcow2', 'base.qcow2']);
      assert.equal(layers[0]!.details?.backing_file, 'mid.qcow2');
      assert.equal(layers[0]!.details?.backing_fmt, 'qcow2');
      assert.equal(img.virtualSize, 16 * MiB);
      const tail = await extentsOf(img, 12 * MiB, 13 * MiB);
      assert.deepEqual(tail, [{ start: 12 * MiB, end: 13 * MiB, kind: 'unallocated' }]);
    } finally {
      await img.close();
    }
  } finally {
    d.cleanup();
  }
});

test('qcow2 reader: external data file (raw and not raw)', { timeout: 300_000, skip }, async (t) => {
  const d = tempDir();
  try {
    for (const raw of ['on', 'off']) {
      await t.test(`data_file_raw=${raw}`, async () => {
        const img = join(d.dir, `ext-${raw}.qcow2`);
        run('qemu-img', ['create', '-f', 'qcow2', '-o', `data_file=ext-${raw}.data,data_file_raw=${raw}`, img, '8M'], { cwd: d.dir });
        // qemu 7.2 resolves a relative data file name against its working directory; we resolve it
        // against the image's folder (where qemu-img create put it). Run qemu there so both agree.
        run('qemu-io', ['-c', 'write -P 0x33 0 1M', '-c', 'write -P 0x44 3M 100k', '-c', 'write -z 5M 64k', img], { cwd: d.dir });
        const image = await checkImage(img, d.dir);
        try {
          assert.equal(image.layers()[0]!.details?.data_file, `ext-${raw}.data`);
          assert.equal(image.layers()[0]!.details?.data_file_raw, raw === 'on');
        } finally {
          await image.close();
        }
      });
    }
  } finally {
    d.cleanup();
  }
});

test('qcow2 reader: cost follows metadata on a sparse 4 TiB image', { timeout: 300_000, skip }, async () => {
  const d = tempDir();
  try {
    const img = join(d.dir, 'big.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', img, '4T']);
    run('qemu-io', ['-c', 'write -P 1 0 64k', '-c', 'write -P 2 2T 128k', '-c', 'write -z 3T 64k', '-c', 'write -P 3 4095G 4k', img]);
    const image = await openImage(img);
    try {
      const t0 = Date.now();
      const ext = await extentsOf(image);
      assert.ok(Date.now() - t0 < 3000, 'walking 4 TiB of mostly empty L1 must be quick');
      const T = 2 ** 40;
      const G = 2 ** 30;
      assert.deepEqual(
        ext.filter((e) => e.kind !== 'unallocated').map((e) => [e.start, e.end, e.kind]),
        [
          [0, 65536, 'data'],
          [2 * T, 2 * T + 131072, 'data'],
          [3 * T, 3 * T + 65536, 'zero'],
          [4095 * G, 4095 * G + 65536, 'data'],
        ],
      );
      const b = Buffer.alloc(8192);
      await image.read(b, 4095 * G - 4096);
      assert.ok(b.subarray(0, 4096).every((x) => x === 0));
      assert.ok(b.subarray(4096).every((x) => x === 3));
    } finally {
      await image.close();
    }
  } finally {
    d.cleanup();
  }
});
