/**
 * ext2/3/4 free space against e2fsprogs: our free ranges must equal dumpe2fs's free block lists,
 * and clobbering every range we call free must leave e2fsck clean and every file intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, readSync } from 'node:fs';
import { tempDir, fileContent, openRawVolume, run, clobber } from '../helpers/fixtures.js';
import { makeExtImage, e2fsck, extFileSums, dumpe2fsFree, dumpe2fsUnusedItables } from '../helpers/ext-fixtures.js';
import { extReader } from '../../src/fs/ext/index.js';
import { Extents } from '../../src/io/extents.js';

const files = {
  'a.bin': fileContent('a', 3 << 20),
  'dir/b.bin': fileContent('b', 700 * 1024 + 123),
  'dir/sub/c.txt': Buffer.from('hello\n'),
  'gone.bin': fileContent('gone', 5 << 20),
  'dir/gone2.bin': fileContent('gone2', 1 << 20),
};

const VARIANTS: Array<{ name: string; type: 'ext2' | 'ext3' | 'ext4'; args: string[]; size: number }> = [
  { name: 'ext2', type: 'ext2', args: [], size: 48 },
  { name: 'ext3', type: 'ext3', args: [], size: 48 },
  { name: 'ext4 (4 KiB blocks)', type: 'ext4', args: ['-b', '4096'], size: 64 },
  { name: 'ext4 (1 KiB blocks)', type: 'ext4', args: ['-b', '1024'], size: 48 },
  { name: 'ext4 bigalloc', type: 'ext4', args: ['-b', '4096', '-O', 'bigalloc', '-C', '16384'], size: 128 },
  { name: 'ext4 meta_bg', type: 'ext4', args: ['-b', '1024', '-O', 'meta_bg,^resize_inode'], size: 64 },
  { name: 'ext4 uninit_bg (gdt_csum)', type: 'ext4', args: ['-O', '^metadata_csum,uninit_bg'], size: 64 },
  { name: 'ext4 without flex_bg', type: 'ext4', args: ['-O', '^flex_bg'], size: 64 },
  { name: 'ext4 sparse_super2', type: 'ext4', args: ['-b', '1024', '-O', 'sparse_super2'], size: 64 },
];

for (const v of VARIANTS) {
  test(`ext: ${v.name}: free ranges equal dumpe2fs, and clobbering them keeps the filesystem intact`, async () => {
    const { dir, cleanup } = tempDir();
    try {
      const img = join(dir, 'fs.img');
      makeExtImage(img, { type: v.type, sizeMiB: v.size, mkfsArgs: v.args, files, remove: ['gone.bin', 'dir/gone2.bin'] }, dir);
      const before = extFileSums(img, dir);
      assert.equal(before.size, 3);

      const { volume, close } = await openRawVolume(img);
      const a = await extReader.analyze(volume);
      await close();
      assert.equal(a.type, v.type);
      assert.equal(a.trusted, true, a.warnings.join('; '));
      // Free blocks, plus the inode-table blocks its group descriptor counts as never used.
      const expected = new Extents([...dumpe2fsFree(img).ranges, ...dumpe2fsUnusedItables(img)].map(([start, end]) => ({ start, end })));
      assert.equal(a.free.total(), expected.total(), 'free bytes differ from dumpe2fs');
      assert.equal(a.free.subtract(expected).total(), 0, 'we call free some blocks dumpe2fs says are used');
      assert.ok(a.freeBytes > 6 << 20, 'the deleted files should be free');

      clobber(img, a.free);
      const fsck = e2fsck(img);
      assert.equal(fsck.status, 0, fsck.output);
      assert.deepEqual(extFileSums(img, dir), before);
    } finally {
      cleanup();
    }
  });
}

async function analyzeAfter(setup: (img: string) => void) {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'fs.img');
    makeExtImage(img, { type: 'ext4', sizeMiB: 32, files: { 'x.bin': fileContent('x', 1 << 20) } }, dir);
    setup(img);
    const { volume, close } = await openRawVolume(img);
    try {
      return await extReader.analyze(volume);
    } finally {
      await close();
    }
  } finally {
    cleanup();
  }
}

test('ext: a journal that needs recovery keeps the filesystem whole', { timeout: 300_000 }, async () => {
  const a = await analyzeAfter((img) => run('debugfs', ['-w', '-R', 'feature needs_recovery', img]));
  assert.equal(a.trusted, false);
  assert.equal(a.free.total(), 0);
  assert.match(a.warnings.join(), /journal needs recovery/);
});

test('ext: a filesystem not cleanly unmounted, or with errors, is kept whole', { timeout: 300_000 }, async () => {
  const dirty = await analyzeAfter((img) => run('debugfs', ['-w', '-R', 'ssv state 0', img]));
  assert.equal(dirty.trusted, false);
  assert.match(dirty.warnings.join(), /not cleanly unmounted/);
  const errors = await analyzeAfter((img) => run('debugfs', ['-w', '-R', 'ssv state 3', img]));
  assert.equal(errors.trusted, false);
  assert.match(errors.warnings.join(), /errors recorded/);
});

test('ext: an unknown incompatible feature keeps the filesystem whole', { timeout: 300_000 }, async () => {
  const a = await analyzeAfter((img) => run('debugfs', ['-w', '-R', 'ssv feature_incompat 0x400000', img]));
  assert.equal(a.trusted, false);
  assert.match(a.warnings.join(), /unknown incompatible feature/);
});

test('ext: a block bitmap that fails its checksum keeps the filesystem whole', { timeout: 300_000 }, async () => {
  const a = await analyzeAfter((img) => {
    const bitmapBlock = Number(/Block bitmap at (\d+)/.exec(run('dumpe2fs', [img]))![1]);
    const bs = 1024;
    const fd = openSync(img, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, bitmapBlock * bs + 500);
    b[0] = b[0]! ^ 0x10;
    writeSync(fd, b, 0, 1, bitmapBlock * bs + 500);
    closeSync(fd);
  });
  assert.equal(a.trusted, false);
  assert.match(a.warnings.join(), /checksum|free clusters/);
});

test('ext: a bitmap that disagrees with its group descriptor (no checksums) keeps the filesystem whole', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'fs.img');
    makeExtImage(img, { type: 'ext2', sizeMiB: 16, files: { 'x.bin': fileContent('x', 1 << 20) } }, dir);
    const bitmapBlock = Number(/Block bitmap at (\d+)/.exec(run('dumpe2fs', [img]))![1]);
    const fd = openSync(img, 'r+');
    writeSync(fd, Buffer.alloc(64), 0, 64, bitmapBlock * 1024 + 16); // mark 512 used blocks free
    closeSync(fd);
    const { volume, close } = await openRawVolume(img);
    const a = await extReader.analyze(volume);
    await close();
    assert.equal(a.trusted, false);
    assert.match(a.warnings.join(), /bitmap shows/);
  } finally {
    cleanup();
  }
});

test('ext: a filesystem larger than its volume is an error naming the superblock', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'fs.img');
    makeExtImage(img, { type: 'ext4', sizeMiB: 16, files: {} }, dir);
    run('truncate', ['-s', '8M', img]);
    const { volume, close } = await openRawVolume(img);
    await assert.rejects(extReader.analyze(volume), /superblock at 0x400: .* does not fit its volume/);
    await close();
  } finally {
    cleanup();
  }
});
