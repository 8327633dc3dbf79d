/**
 * In-place on a block device: BLKDISCARD through a loop device, whose discard punches holes in
 * its backing file, so the oracle is the same as for files: du drops, fsck clean, files intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { statSync } from 'node:fs';
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

test('a qcow2 written onto a block device is compacted in place: the new image end is reported and the space past it discarded', { timeout: 300_000, skip: loopSkip() }, async () => {
  const { dir, cleanup } = tempDir();
  let loop = '';
  try {
    const raw = join(dir, 'guest.img');
    const parts = buildDisk(raw, {
      sizeMiB: 64,
      label: 'gpt',
      garbage: true,
      workDir: dir,
      parts: [{ sizeMiB: 56, ext: { type: 'ext4', files: { 'a.bin': fileContent('a', 3 << 20), 'gone.bin': fileContent('g', 24 << 20), 'b.bin': fileContent('b', 4 << 20) }, remove: ['gone.bin'] } }],
    });
    const p = parts[0]!;
    extract(raw, p.offset, p.size, join(dir, 'before.img'));
    const before = extFileSums(join(dir, 'before.img'), dir);
    // The "logical volume": a 128 MiB file holding the qcow2 at its start, as oVirt lays out a thin disk.
    const qcow2 = join(dir, 'guest.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
    const lv = join(dir, 'lv.img');
    run('truncate', ['-s', '128M', lv]);
    run('dd', [`if=${qcow2}`, `of=${lv}`, 'conv=notrunc,sparse', 'bs=1M', 'status=none']);
    const du0 = allocatedBytes(lv);
    loop = run('losetup', ['-f', '--show', lv]).trim();
    const r = sparsify(['--in-place', '--compact', '--format', 'qcow2', '--machine-readable', loop]);
    assert.equal(r.status, 0, r.stderr);
    const m = /^image-end-offset: (\d+)$/m.exec(r.stdout);
    assert.ok(m, r.stdout);
    const end = Number(m[1]);
    assert.match(r.stdout, /the volume can be reduced to that plus headroom/);
    // qemu agrees on where the image ends now, and finds it clean.
    const check = runStatus('qemu-img', ['check', '-f', 'qcow2', '--output=json', loop]);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    assert.equal((JSON.parse(check.stdout) as { 'image-end-offset': number })['image-end-offset'], end);
    assert.ok(end < statSync(qcow2).size * 0.7, `image end ${end}, the qcow2 was ${statSync(qcow2).size} long`);
    run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', loop, join(dir, 'after.raw')]);
    run('losetup', ['-d', loop]);
    loop = '';
    // The loop device passed the discards on: the file behind it gave the space back.
    assert.ok(du0 - allocatedBytes(lv) > 20 << 20, `the backing file's allocation dropped by ${du0 - allocatedBytes(lv)}`);
    extract(join(dir, 'after.raw'), p.offset, p.size, join(dir, 'after.img'));
    const fsck = e2fsck(join(dir, 'after.img'));
    assert.equal(fsck.status, 0, fsck.output);
    assert.deepEqual(extFileSums(join(dir, 'after.img'), dir), before);
  } finally {
    if (loop) runStatus('losetup', ['-d', loop]);
    cleanup();
  }
});

test('a vdi on a block device is compacted without truncating: the space past its new end is discarded', { timeout: 300_000, skip: loopSkip() }, async () => {
  const { dir, cleanup } = tempDir();
  let loop = '';
  try {
    const raw = join(dir, 'guest.img');
    const parts = buildDisk(raw, {
      sizeMiB: 48,
      label: 'gpt',
      garbage: true,
      workDir: dir,
      parts: [{ sizeMiB: 40, ext: { type: 'ext4', files: { 'a.bin': fileContent('a', 3 << 20), 'gone.bin': fileContent('g', 20 << 20) }, remove: ['gone.bin'] } }],
    });
    const p = parts[0]!;
    extract(raw, p.offset, p.size, join(dir, 'before.img'));
    const before = extFileSums(join(dir, 'before.img'), dir);
    const vdi = join(dir, 'guest.vdi');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', raw, vdi]);
    const lv = join(dir, 'lv.img');
    run('truncate', ['-s', '96M', lv]);
    run('dd', [`if=${vdi}`, `of=${lv}`, 'conv=notrunc,sparse', 'bs=1M', 'status=none']);
    const du0 = allocatedBytes(lv);
    loop = run('losetup', ['-f', '--show', lv]).trim();
    const r = sparsify(['--in-place', '--format', 'vdi', '--machine-readable', loop]);
    assert.equal(r.status, 0, r.stderr);
    const end = Number(/^image-end-offset: (\d+)$/m.exec(r.stdout)?.[1]);
    assert.ok(end > 0 && end < statSync(vdi).size, r.stdout);
    const check = runStatus('qemu-img', ['check', '-f', 'vdi', loop]);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    run('qemu-img', ['convert', '-f', 'vdi', '-O', 'raw', loop, join(dir, 'after.raw')]);
    run('losetup', ['-d', loop]);
    loop = '';
    assert.ok(du0 - allocatedBytes(lv) > 10 << 20, `the backing file's allocation dropped by ${du0 - allocatedBytes(lv)}`);
    extract(join(dir, 'after.raw'), p.offset, p.size, join(dir, 'after.img'));
    const fsck = e2fsck(join(dir, 'after.img'));
    assert.equal(fsck.status, 0, fsck.output);
    assert.deepEqual(extFileSums(join(dir, 'after.img'), dir), before);
  } finally {
    if (loop) runStatus('losetup', ['-d', loop]);
    cleanup();
  }
});
