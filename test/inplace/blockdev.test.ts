/**
 * In-place on a block device: BLKDISCARD through a loop device, whose discard punches holes in
 * its backing file, so the oracle is the same as for files: du drops, fsck clean, files intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir, fileContent, run, runStatus, allocatedBytes } from '../helpers/fixtures.js';
import { buildDisk } from '../helpers/disk-builder.js';
import { e2fsck, extFileSums, extract } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';

function loopSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root for a loop device';
  return runStatus('losetup', ['-f']).status === 0 ? false : 'no free loop device';
}

test('in-place on a block device discards free space and keeps every file', { timeout: 300_000, skip: loopSkip() }, async () => {
  const { dir, cleanup } = tempDir();
  let loop = '';
  try {
    const img = join(dir, 'disk.img');
    const parts = buildDisk(img, {
      sizeMiB: 64,
      label: 'gpt',
      garbage: true,
      workDir: dir,
      parts: [{ sizeMiB: 56, ext: { type: 'ext4', files: { 'a.bin': fileContent('a', 2 << 20), 'gone.bin': fileContent('g', 20 << 20) }, remove: ['gone.bin'] } }],
    });
    const p = parts[0]!;
    extract(img, p.offset, p.size, join(dir, 'before.img'));
    const before = extFileSums(join(dir, 'before.img'), dir);
    const du0 = allocatedBytes(img);
    loop = run('losetup', ['-f', '--show', img]).trim();
    const r = sparsify(['--in-place', '--machine-readable', loop]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /of free space discarded on the device/);
    run('losetup', ['-d', loop]);
    loop = '';
    assert.ok(du0 - allocatedBytes(img) > 30 << 20, `du dropped by ${du0 - allocatedBytes(img)}`);
    extract(img, p.offset, p.size, join(dir, 'after.img'));
    const fsck = e2fsck(join(dir, 'after.img'));
    assert.equal(fsck.status, 0, fsck.output);
    assert.deepEqual(extFileSums(join(dir, 'after.img'), dir), before);
  } finally {
    if (loop) runStatus('losetup', ['-d', loop]);
    cleanup();
  }
});
