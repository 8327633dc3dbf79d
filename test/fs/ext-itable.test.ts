/**
 * Unused ext4 inode tables (issue 12): mke2fs with lazy_itable_init on garbage leaves them as
 * garbage, and the group descriptors (checked by metadata_csum) say which blocks hold no inode.
 * Oracle: dumpe2fs's inode-table positions and unused counts, e2fsck -fn, and every file's
 * checksum read back by debugfs. Where the checksums are broken, the tables stay as they were.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync } from 'node:fs';
import { tempDir, fileContent, readBytes, patchFile, allocatedBytes, run } from '../helpers/fixtures.js';
import { makeExtImage, e2fsck, extFileSums, dumpe2fsUnusedItables } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { isZero } from '../../src/execute/zero-runs.js';
import { Extents } from '../../src/io/extents.js';

const files: Record<string, Buffer> = { 'a.bin': fileContent('a', 2 << 20), 'gone.bin': fileContent('gone', 3 << 20) };
for (let i = 0; i < 300; i++) files[`many/f${i}.txt`] = Buffer.from(`file ${i}\n`);

/** Total bytes of `ranges` in `img` that read as zero, and the total of all of them. */
function zeroBytes(img: string, ranges: Array<[number, number]>): { zero: number; total: number } {
  let zero = 0;
  let total = 0;
  for (const [s, e] of ranges) {
    for (let off = s; off < e; off += 1024) {
      total += 1024;
      if (isZero(readBytes(img, off, 1024))) zero += 1024;
    }
  }
  return { zero, total };
}

describe('ext4 unused inode tables', { timeout: 120_000 }, () => {
  let work: { dir: string; cleanup: () => void };
  let img: string;
  let tails: Array<[number, number]>;
  let sums: Map<string, string>;

  before(() => {
    work = tempDir('sparsify-itable-');
    img = join(work.dir, 'fs.img');
    // 1 KiB blocks and many inodes: 12 MiB of inode table, most of it never used.
    makeExtImage(img, { type: 'ext4', sizeMiB: 96, mkfsArgs: ['-b', '1024', '-N', '49152', '-O', 'metadata_csum', '-E', 'nodiscard,lazy_itable_init=1'], files, remove: ['gone.bin'] }, work.dir);
    tails = dumpe2fsUnusedItables(img);
    sums = extFileSums(img, work.dir);
  });
  after(() => work?.cleanup());

  test('the fixture has unused inode tables full of garbage', () => {
    const { zero, total } = zeroBytes(img, tails);
    assert.ok(total > 8 << 20, `only ${total} bytes of unused inode table`);
    assert.ok(zero < total / 100, `${zero} of ${total} bytes already zero: the test could not fail`);
  });

  test('copy: unused inode tables read as zero, e2fsck is clean, files identical', () => {
    const out = join(work.dir, 'copy.img');
    const r = sparsify(['-q', img, out]);
    assert.equal(r.status, 0, r.stderr);
    const { zero, total } = zeroBytes(out, tails);
    assert.equal(zero, total);
    const fsck = e2fsck(out);
    assert.equal(fsck.status, 0, fsck.output);
    assert.deepEqual(extFileSums(out, work.dir), sums);
  });

  test('in place: unused inode tables are punched, e2fsck is clean, files identical', () => {
    const copy = join(work.dir, 'inplace.img');
    copyFileSync(img, copy);
    const before = allocatedBytes(copy);
    const r = sparsify(['-q', '--in-place', copy]);
    assert.equal(r.status, 0, r.stderr);
    // Holes are punched in whole 4 KiB host blocks; the 1 KiB edges of each run stay as they were.
    const punchable = [...new Extents(tails.map(([start, end]) => ({ start, end }))).alignInward(4096)].map((x): [number, number] => [x.start, x.end]);
    const { zero, total } = zeroBytes(copy, punchable);
    assert.ok(total > 8 << 20);
    assert.equal(zero, total);
    assert.ok(before - allocatedBytes(copy) > total, 'du should drop by more than the unused tables');
    const fsck = e2fsck(copy);
    assert.equal(fsck.status, 0, fsck.output);
    assert.deepEqual(extFileSums(copy, work.dir), sums);
  });

  test('the analysis reports the unused inode table bytes', () => {
    const r = sparsify(['--analyze', '--json', img]);
    assert.equal(r.status, 0, r.stderr);
    const map = JSON.parse(r.stdout) as { root: { details: Record<string, number> } };
    const expected = tails.reduce((t, [s, e]) => t + e - s, 0);
    assert.equal(map.root.details['unusedInodeTableBytes'], expected);
  });

  test('a descriptor whose checksum is broken keeps the tables (and the filesystem) as they were', () => {
    const broken = join(work.dir, 'broken-desc.img');
    copyFileSync(img, broken);
    // Group 1's descriptor (64 bytes each, table at block 2 of a 1 KiB-block filesystem): claim more unused inodes.
    const at = 2 * 1024 + 64 + 0x1c;
    const v = readBytes(broken, at, 2).readUInt16LE(0);
    patchFile(broken, at, Buffer.from([(v - 7) & 0xff, ((v - 7) >> 8) & 0xff]));
    const out = join(work.dir, 'broken-desc-out.img');
    const r = sparsify(['-q', broken, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /descriptor checksum mismatch/);
    const { zero } = zeroBytes(out, tails);
    assert.ok(zero < 1 << 20, `${zero} bytes of unused inode table were cleared despite a broken checksum`);
  });

  test('an inode bitmap whose checksum is broken keeps that group\'s table; the others are reclaimed', () => {
    const broken = join(work.dir, 'broken-bitmap.img');
    copyFileSync(img, broken);
    const dump = run('dumpe2fs', [broken]);
    const group0 = dump.split(/^Group 1:/m)[0]!;
    const bitmapBlock = Number(/Inode bitmap at (\d+)/.exec(group0)![1]);
    const byteAt = bitmapBlock * 1024 + 300; // inode 2401 on: past the used ones, inside the checksummed bytes
    assert.equal(readBytes(img, byteAt, 1)[0], 0);
    patchFile(broken, byteAt, Buffer.from([0x01]));
    const out = join(work.dir, 'broken-bitmap-out.img');
    const r = sparsify(['-q', broken, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /inode bitmap of group 0 .* fails its checksum/);
    const table = /Inode table at (\d+)-(\d+)/.exec(group0)!;
    const group0Table = Extents.of(Number(table[1]) * 1024, (Number(table[2]) + 1) * 1024);
    const all = new Extents(tails.map(([start, end]) => ({ start, end })));
    const toPairs = (e: Extents) => [...e].map((x): [number, number] => [x.start, x.end]);
    const kept = zeroBytes(out, toPairs(all.intersect(group0Table)));
    assert.ok(kept.total > 0 && kept.zero < 1024, 'group 0 table was cleared');
    const others = zeroBytes(out, toPairs(all.subtract(group0Table)));
    assert.ok(others.total > 8 << 20);
    assert.equal(others.zero, others.total);
  });
});
