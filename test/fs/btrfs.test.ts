/**
 * btrfs reader against the real tools: mkfs.btrfs --rootdir on garbage (DUP and single metadata,
 * crc32c and sha256, mixed block groups); our free total is compared with the figures
 * dump-tree prints (device extents, block group `used`); after overwriting every range we call
 * free with garbage, `btrfs check --readonly --check-data-csum` must pass and `btrfs restore`
 * must give back every file byte for byte. Log trees, extra devices, RAID and corrupt metadata
 * must never yield a free map.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, readFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { randomInt } from 'node:crypto';
import { tempDir, run, runStatus, haveTool, garbageFile, sha256, openRawVolume, fileContent, clobber, readBytes } from '../helpers/fixtures.js';
import { btrfsReader } from '../../src/fs/btrfs.js';
import { SparsifyError } from '../../src/io/errors.js';
import { crc32c } from '../../src/io/checksums.js';

const SIZE = 128 << 20;
const skip = haveTool('mkfs.btrfs') && haveTool('btrfs') ? false : 'btrfs-progs (mkfs.btrfs, btrfs) not installed';
const FILES: Record<string, number> = { 'big.bin': 6 << 20, 'mid.bin': 300_000, 'tiny.txt': 7, 'sub/a.bin': 5000, 'sub/deep/b.bin': 70_000 };

function makeBtrfs(dir: string, extra: string[], name = 'btrfs.img', files = FILES): string {
  const src = join(dir, 'src');
  mkdirSync(join(src, 'sub/deep'), { recursive: true });
  for (const [f, size] of Object.entries(files)) writeFileSync(join(src, f), fileContent(f, size));
  const img = join(dir, name);
  garbageFile(img, SIZE);
  run('mkfs.btrfs', ['-q', '-K', '-f', ...extra, '--rootdir', src, img]);
  return img;
}

/**
 * Free space by btrfs's own accounting: unallocated device space (device size minus dev extents)
 * plus, per block group, length minus `used`, once per copy.
 */
function toolsFree(img: string): { unallocated: number; inGroups: number } {
  const devTotal = Number(/dev_item.total_bytes\s+(\d+)/.exec(run('btrfs', ['inspect-internal', 'dump-super', img]))![1]);
  let allocated = 0;
  for (const m of run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'dev', img]).matchAll(/chunk_offset \d+ length (\d+)/g)) allocated += Number(m[1]);
  let inGroups = 0;
  const extent = run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'extent', img]);
  for (const m of extent.matchAll(/key \(\d+ BLOCK_GROUP_ITEM (\d+)\)[^\n]*\n\s*block group used (\d+) chunk_objectid \d+ flags (\S+)/g)) {
    const copies = m[3]!.includes('DUP') ? 2 : 1;
    inGroups += (Number(m[1]) - Number(m[2])) * copies;
  }
  return { unallocated: devTotal - allocated, inGroups };
}

async function analyze(img: string) {
  const { volume, close } = await openRawVolume(img);
  try {
    assert.equal(await btrfsReader.probe(volume), true);
    return await btrfsReader.analyze(volume);
  } finally {
    await close();
  }
}

function patchBytes(img: string, off: number, bytes: Buffer): void {
  const fd = openSync(img, 'r+');
  writeSync(fd, bytes, 0, bytes.length, off);
  closeSync(fd);
}

/** Rewrite the primary superblock's crc32c after patching it. */
function resealSuper(img: string): void {
  const sb = readBytes(img, 0x10000, 4096);
  const c = Buffer.alloc(4);
  c.writeUInt32LE(crc32c(sb.subarray(0x20)));
  patchBytes(img, 0x10000, c);
}

/** Enough small files that, with 4 KiB nodes, the extent and fs trees grow interior nodes. */
const MANY: Record<string, number> = { ...FILES };
for (let i = 0; i < 1200; i++) MANY[`sub/m${i}.bin`] = 4096 + (i % 7) * 1000;

const VARIANTS: Array<[string, string[], Record<string, number>?]> = [
  ['default (DUP metadata)', []],
  ['many files, 4 KiB nodes', ['--nodesize', '4096'], MANY],
  ['single metadata', ['-m', 'single', '-d', 'single']],
  ['sha256 checksums', ['--csum', 'sha256']],
  ['xxhash checksums', ['--csum', 'xxhash']],
  ['mixed block groups', ['-M', '-m', 'single', '-d', 'single']],
];

for (const [label, extra, files = FILES] of VARIANTS) {
  test(`btrfs ${label}: free map matches dump-tree, survives clobbering, files restore identical`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const img = makeBtrfs(dir, extra, 'btrfs.img', files);
      if (files === MANY) assert.match(run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'extent', img]), /^node \d+ level [1-9]/m);
      const a = await analyze(img);
      assert.equal(a.trusted, true, a.warnings.join('; '));
      const ref = toolsFree(img);
      const theirs = ref.unallocated + ref.inGroups;
      // We keep the first MiB (never allocated, boot area) and the superblock copies.
      assert.ok(a.freeBytes <= theirs - (1 << 20), `${a.freeBytes} > ${theirs}`);
      assert.ok(a.freeBytes >= theirs - (1 << 20) - 3 * 4096, `${a.freeBytes} vs ${theirs}`);
      const ratio = a.freeBytes / theirs;
      assert.ok(ratio >= 0.9, `reclaimed ${ratio}`);
      console.log(`btrfs ${label}: we free ${a.freeBytes} bytes, btrfs accounting ${theirs} (${(ratio * 100).toFixed(2)} %)`);
      assert.equal(a.free.contains(0x10000), false);
      assert.equal(a.free.contains(0x4000000), false);

      clobber(img, a.free);
      const check = runStatus('btrfs', ['check', '--readonly', '--check-data-csum', img]);
      assert.equal(check.status, 0, `btrfs check after clobbering free space:\n${check.stdout}${check.stderr}`);
      const out = join(dir, 'restored');
      mkdirSync(out);
      run('btrfs', ['restore', img, out]);
      for (const [f, size] of Object.entries(files)) {
        assert.equal(sha256(readFileSync(join(out, f))), sha256(fileContent(f, size)), `${f} restored`);
      }
      const again = await analyze(img);
      assert.equal(again.freeBytes, a.freeBytes);
    } finally {
      cleanup();
    }
  });
}

test('btrfs: a log tree, a second device or a RAID profile keeps everything', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = makeBtrfs(dir, []);
    // A log tree left by fsync before a crash: the super's log_root is set (here: at the root tree).
    const root = readBytes(img, 0x10000 + 0x50, 8);
    patchBytes(img, 0x10000 + 0x60, root);
    resealSuper(img);
    assert.doesNotMatch(run('btrfs', ['inspect-internal', 'dump-super', img]), /log_root\s+0\n/);
    const withLog = await analyze(img);
    assert.equal(withLog.trusted, false);
    assert.equal(withLog.free.isEmpty, true);
    assert.match(withLog.warnings.join(' '), /log tree/);
    // btrfs's own tool drops the log; then the map is trusted again.
    run('btrfs', ['rescue', 'zero-log', img]);
    assert.equal((await analyze(img)).trusted, true);

    // blake2b checksums are not implemented: untrusted, with the reason.
    const blake = makeBtrfs(dir, ['--csum', 'blake2'], 'blake.img');
    const b2 = await analyze(blake);
    assert.equal(b2.trusted, false);
    assert.match(b2.warnings.join(' '), /checksum type blake2b is not supported/);

    const d1 = join(dir, 'd1.img');
    const d2 = join(dir, 'd2.img');
    garbageFile(d1, SIZE, 0x5a);
    garbageFile(d2, SIZE, 0x5a);
    run('mkfs.btrfs', ['-q', '-K', '-f', '-d', 'raid1', '-m', 'raid1', d1, d2]);
    const multi = await analyze(d1);
    assert.equal(multi.trusted, false);
    assert.match(multi.warnings.join(' '), /2 devices/);
  } finally {
    cleanup();
  }
});

test('btrfs: corrupt metadata gives CorruptError or an untrusted result, never a crash', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = makeBtrfs(dir, []);
    const { volume, close } = await openRawVolume(img);
    try {
      await assert.rejects(btrfsReader.analyze(volume.slice('/dev/sda', 0, SIZE / 2)), { name: 'CorruptError', message: /exceeds the volume/ });
      assert.equal(await btrfsReader.probe(volume.slice('/dev/sda', 0, 0x10000)), false);
    } finally {
      await close();
    }
    // The extent tree root's two DUP copies, located with btrfs's own tools.
    const rootTree = run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'root', img]);
    const extentRoot = Number(/\(EXTENT_TREE ROOT_ITEM 0\)[^\n]*\n[^\n]*bytenr (\d+)/.exec(rootTree)![1]);
    const copies: number[] = [];
    const chunkTree = run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'chunk', img]);
    for (const m of chunkTree.matchAll(/CHUNK_ITEM (\d+)\)[^\n]*\n\s*length (\d+)[\s\S]*?(?=\titem|$)/g)) {
      const [start, len] = [Number(m[1]), Number(m[2])];
      if (extentRoot < start || extentRoot >= start + len) continue;
      for (const s of m[0].matchAll(/stripe \d+ devid \d+ offset (\d+)/g)) copies.push(Number(s[1]) + extentRoot - start);
    }
    const map = chunkTree;
    assert.equal(copies.length, 2, map);
    const pristine = readBytes(img, 0, SIZE);

    // One bad copy: DUP lets us (and btrfs) read the other.
    patchBytes(img, copies[0]! + 200, Buffer.from('garbage'));
    assert.equal((await analyze(img)).trusted, true);
    // Both bad: nothing to trust.
    patchBytes(img, copies[1]! + 200, Buffer.from('garbage'));
    await assert.rejects(analyze(img), { name: 'CorruptError', message: /tree block at logical 0x[0-9a-f]+: copy at 0x[0-9a-f]+ has a bad checksum/ });
    patchBytes(img, 0, pristine);

    // Random flips in the extent tree root (both copies, checksum recomputed): the walk's own checks.
    const node = readBytes(img, copies[0]!, 16384);
    for (let i = 0; i < 40; i++) {
      const bad = Buffer.from(node);
      const off = i % 2 ? 0x30 + randomInt(0, 0x800) : 16384 - randomInt(1, 0x400);
      bad[off] = randomInt(0, 256);
      bad.writeUInt32LE(crc32c(bad.subarray(0x20)), 0);
      for (const c of copies) patchBytes(img, c, bad);
      const { volume, close } = await openRawVolume(img);
      try {
        const r = await btrfsReader.analyze(volume);
        if (!r.trusted) assert.equal(r.free.isEmpty, true);
      } catch (e) {
        assert.ok(e instanceof SparsifyError, `unexpected ${(e as Error).stack}`);
      } finally {
        await close();
      }
    }
    patchBytes(img, 0, pristine);

    // Superblock checksum.
    patchBytes(img, 0x10000 + 0x100, Buffer.from([0xff]));
    await assert.rejects(analyze(img), { name: 'CorruptError', message: /superblock at 0x10000 has a bad checksum/ });
    patchBytes(img, 0, pristine);

    // Random flips in the superblock (resealed so they get past the checksum) and sys_chunk_array.
    for (let i = 0; i < 60; i++) {
      const off = 0x10000 + (i % 2 ? 0x32b + randomInt(0, 200) : 0x30 + randomInt(0, 0x300));
      const saved = readBytes(img, 0x10000, 4096);
      patchBytes(img, off, Buffer.from([randomInt(0, 256)]));
      resealSuper(img);
      const { volume, close } = await openRawVolume(img);
      try {
        const r = await btrfsReader.analyze(volume);
        if (!r.trusted) assert.equal(r.free.isEmpty, true);
      } catch (e) {
        assert.ok(e instanceof SparsifyError, `unexpected ${(e as Error).stack}`);
      } finally {
        await close();
      }
      patchBytes(img, 0x10000, saved);
    }
  } finally {
    cleanup();
  }
});
