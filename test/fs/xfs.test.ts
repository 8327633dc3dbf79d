/**
 * XFS reader against the real tools: mkfs.xfs (v5 and v4) on garbage, populated with a protofile;
 * free totals must equal what xfs_db reports; after we overwrite every range we call free with
 * garbage, xfs_repair -n must pass and every file must read back identical through the block
 * maps xfs_db prints. Dirty logs and corrupt metadata must never yield a free map.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, openSync, writeSync, closeSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { randomInt } from 'node:crypto';
import { tempDir, run, runStatus, haveTool, garbageFile, sha256, openRawVolume, fileContent, clobber } from '../helpers/fixtures.js';
import { xfsReader } from '../../src/fs/xfs.js';
import { xfsDb, readThroughXfsDb } from '../helpers/xfs-fixtures.js';
import { SparsifyError } from '../../src/io/errors.js';

const SIZE = 64 << 20;
const have = haveTool('mkfs.xfs') && haveTool('xfs_db') && haveTool('xfs_repair') && haveTool('xfs_logprint');
const skip = have ? false : 'xfsprogs (mkfs.xfs, xfs_db, xfs_repair, xfs_logprint) not installed';
// mkfs.xfs >= 5.19 refuses filesystems under 300 MB unless it believes it runs under fstests.
process.env.QA_CHECK_FS = '1';
process.env.TEST_DIR = '1';
process.env.TEST_DEV = '1';

const FILES: Record<string, number> = { 'big.bin': 3 << 20, 'mid.bin': 300_000, 'tiny.txt': 1, 'sub/a.bin': 5000, 'sub/deep/b.bin': 70_000 };

/** Protofile lines (mkfs.xfs -p) for the files under `src`, nested as their paths say. */
function protoLines(src: string, files: string[]): string[] {
  type Dir = { dirs: Map<string, Dir>; files: string[] };
  const root: Dir = { dirs: new Map(), files: [] };
  for (const f of files) {
    const parts = f.split('/');
    let d = root;
    for (const p of parts.slice(0, -1)) {
      if (!d.dirs.has(p)) d.dirs.set(p, { dirs: new Map(), files: [] });
      d = d.dirs.get(p)!;
    }
    d.files.push(f);
  }
  const emit = (d: Dir): string[] => [
    ...d.files.map((f) => `${f.split('/').pop()} ---644 0 0 ${join(src, f)}`),
    ...[...d.dirs].flatMap(([name, sub]) => [`${name} d--755 0 0`, ...emit(sub), '$']),
  ];
  return ['/dummy', '0 0', 'd--755 0 0', ...emit(root), '$', ''];
}

/** Build a populated XFS image on a garbage-filled file; returns its path. */
function makeXfs(dir: string, extra: string[], files: Record<string, number> = FILES): string {
  const src = join(dir, 'src');
  for (const [name, size] of Object.entries(files)) {
    mkdirSync(join(src, name, '..'), { recursive: true });
    writeFileSync(join(src, name), fileContent(name, size));
  }
  writeFileSync(join(dir, 'proto'), protoLines(src, Object.keys(files)).join('\n'));
  const img = join(dir, 'xfs.img');
  garbageFile(img, SIZE);
  run('mkfs.xfs', ['-q', '-K', '-f', ...extra, '-p', join(dir, 'proto'), img]);
  return img;
}

/** Free blocks as xfs_db sees them: freesp counts AGFL blocks too, which we (rightly) do not. */
function dbFreeBlocks(img: string): { freesp: number; agfl: number; agfFree: number } {
  const freesp = Number(/total free blocks (\d+)/.exec(xfsDb(img, 'freesp -s'))![1]);
  const agcount = Number(/agcount = (\d+)/.exec(xfsDb(img, 'sb 0', 'p agcount'))![1]);
  let agfl = 0;
  let agfFree = 0;
  for (let ag = 0; ag < agcount; ag++) {
    const out = xfsDb(img, `agf ${ag}`, 'p freeblks flcount');
    agfFree += Number(/freeblks = (\d+)/.exec(out)![1]);
    agfl += Number(/flcount = (\d+)/.exec(out)![1]);
  }
  return { freesp, agfl, agfFree };
}

async function analyze(img: string) {
  const { volume, close } = await openRawVolume(img);
  try {
    assert.equal(await xfsReader.probe(volume), true);
    return await xfsReader.analyze(volume);
  } finally {
    await close();
  }
}

/** 9 KiB files on 1 KiB blocks with an 8 KiB stripe unit: each file is stripe-aligned, leaving a
 * gap after it, so one AG gets hundreds of free extents and a two-level free-space btree. */
const FRAGMENTED: Record<string, number> = { ...FILES };
for (let i = 0; i < 400; i++) FRAGMENTED[`frag/f${i}`] = 9216;

const VARIANTS: Array<[string, string[], Record<string, number>?]> = [
  ['v5', []],
  ['v4', ['-m', 'crc=0']],
  ['v5 4k-sectors rmapbt', ['-s', 'size=4096', '-m', 'rmapbt=1']],
  ['v5 1k-blocks', ['-b', 'size=1024']],
  ['v5 fragmented', ['-b', 'size=1024', '-d', 'su=8k,sw=1'], FRAGMENTED],
];

for (const [label, extra, files = FILES] of VARIANTS) {
  test(`xfs ${label}: free map matches xfs_db, survives clobbering, files read back`, { skip }, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const img = makeXfs(dir, extra, files);
      if (files === FRAGMENTED) assert.match(xfsDb(img, ...[0, 1, 2, 3].flatMap((ag) => [`agf ${ag}`, 'p bnolevel'])), /bnolevel = [2-9]/);
      const a = await analyze(img);
      assert.equal(a.trusted, true, a.warnings.join('; '));
      assert.equal(a.type, 'xfs');
      assert.equal(a.details?.version, label.startsWith('v5') ? 5 : 4);
      const bs = a.blockSize;
      const ref = dbFreeBlocks(img);
      assert.equal(a.freeBytes, ref.agfFree * bs, 'sum of agf_freeblks');
      assert.equal(a.freeBytes, (ref.freesp - ref.agfl) * bs, 'xfs_db freesp minus AGFL blocks');
      // The fs's own view of reclaimable space is freesp (AGFL included); we must reach >= 90 %.
      const ratio = a.freeBytes / (ref.freesp * bs);
      assert.ok(ratio >= 0.9, `reclaimed ${ratio}`);
      console.log(`xfs ${label}: we free ${a.freeBytes} bytes, xfs_db freesp ${ref.freesp * bs} (${(ratio * 100).toFixed(2)} %)`);
      for (const r of a.free) assert.equal(r.start % bs, 0);

      const agBlocks = Number(/agblocks = (\d+)/.exec(xfsDb(img, 'sb 0', 'p agblocks'))![1]);
      const before = Object.keys(files).map((f) => sha256(readThroughXfsDb(img, f, bs, agBlocks)));
      assert.deepEqual(before, Object.entries(files).map(([f, n]) => sha256(fileContent(f, n))));

      clobber(img, a.free);
      const repair = runStatus('xfs_repair', ['-n', img]);
      assert.equal(repair.status, 0, `xfs_repair -n after clobbering free space:\n${repair.stdout}${repair.stderr}`);
      const after = Object.keys(files).map((f) => sha256(readThroughXfsDb(img, f, bs, agBlocks)));
      assert.deepEqual(after, before);
      const again = await analyze(img);
      assert.equal(again.freeBytes, a.freeBytes);
    } finally {
      cleanup();
    }
  });
}

test('xfs: dirty and re-cycled logs are judged as xfs_logprint judges them', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = makeXfs(dir, []);
    // A clean log written at cycle 7 (filler records of cycle 6 behind the head).
    run('xfs_db', ['-x', '-c', 'logformat -c 7', img]);
    assert.match(run('xfs_logprint', ['-t', img]), /state: <CLEAN>/);
    const clean = await analyze(img);
    assert.equal(clean.trusted, true, clean.warnings.join('; '));
    assert.equal(clean.details?.logClean, true);

    // Drop XLOG_UNMOUNT_TRANS from the unmount record's op header: the log now ends in a plain record.
    const daddr = Number(/daddr: (\d+)/.exec(run('xfs_logprint', ['-t', img]))![1]);
    const fd = openSync(img, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, daddr * 512 + 512 + 9);
    b[0]! &= ~0x20;
    writeSync(fd, b, 0, 1, daddr * 512 + 512 + 9);
    closeSync(fd);
    assert.match(run('xfs_logprint', ['-t', img]), /state: <DIRTY>/);
    const dirty = await analyze(img);
    assert.equal(dirty.trusted, false);
    assert.equal(dirty.free.isEmpty, true);
    assert.match(dirty.warnings.join(' '), /log is dirty/);
  } finally {
    cleanup();
  }
});

test('xfs: corrupt metadata gives CorruptError or an untrusted result, never a crash', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = makeXfs(dir, []);
    const { volume, close } = await openRawVolume(img);
    try {
      // Truncated image: the filesystem is larger than the volume.
      await assert.rejects(xfsReader.analyze(volume.slice('/dev/sda', 0, SIZE / 2)), { name: 'CorruptError', message: /larger than its volume/ });
      // Garbage is not XFS.
      assert.equal(await xfsReader.probe(volume.slice('/dev/sda', 4096, 1 << 20)), false);
    } finally {
      await close();
    }
    const agBlocks = Number(/agblocks = (\d+)/.exec(xfsDb(img, 'sb 0', 'p agblocks'))![1]);
    const bnoRoot = Number(/bnoroot = (\d+)/.exec(xfsDb(img, 'agf 1', 'p bnoroot'))![1]);
    const pristine = Buffer.alloc(SIZE);
    const fd0 = openSync(img, 'r');
    readSync(fd0, pristine, 0, SIZE, 0);
    closeSync(fd0);
    let last = { off: 0, len: 0 };
    const patch = (off: number, bytes: Buffer): void => {
      const fd = openSync(img, 'r+');
      writeSync(fd, pristine, last.off, last.len, last.off); // undo the previous patch
      writeSync(fd, bytes, 0, bytes.length, off);
      closeSync(fd);
      last = { off, len: bytes.length };
    };

    patch(2 * agBlocks * 4096 + 512, Buffer.from('JUNK'));
    await assert.rejects(analyze(img), { name: 'CorruptError', message: /AG 2 AGF at 0x.* bad magic/ });
    patch((agBlocks + bnoRoot) * 4096 + 100, Buffer.from([0xde, 0xad]));
    await assert.rejects(analyze(img), { name: 'CorruptError', message: /AG 1 free-space btree block at 0x[0-9a-f]+ has a bad CRC/ });

    // Random byte flips in the superblock, AGFs and free-space btree roots.
    const spots = [0, 512, agBlocks * 4096 + 512, (agBlocks + bnoRoot) * 4096, 3 * agBlocks * 4096 + 512];
    for (let i = 0; i < 60; i++) {
      const base = spots[i % spots.length]!;
      patch(base + randomInt(0, 256), Buffer.from([randomInt(0, 256)]));
      const { volume, close } = await openRawVolume(img);
      try {
        const r = await xfsReader.analyze(volume);
        if (!r.trusted) assert.equal(r.free.isEmpty, true);
      } catch (e) {
        assert.ok(e instanceof SparsifyError, `unexpected ${(e as Error).stack}`);
      } finally {
        await close();
      }
    }
  } finally {
    cleanup();
  }
});
