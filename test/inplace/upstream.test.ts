/**
 * virt-sparsify's upstream in-place acceptance case: a 400 MiB GPT disk, ext2 /boot and an LVM
 * ext4 root, 310 MiB of 0x01 written and deleted: in-place must drop `du` by more than 300000 KiB.
 * The LVM image needs a loop device to build (test/fixtures/lvm/make-upstream.sh), which tests may
 * not use: it runs when SPARSIFY_UPSTREAM_IMG names an image built by that script. The same case
 * without LVM (ext4 straight in partition 2) always runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { tempDir, run, runStatus, haveTool, repoPath, readBytes } from '../helpers/fixtures.js';
import { e2fsck, extract } from '../helpers/ext-fixtures.js';
import { du } from './crash-helpers.js';
import { sparsifyInPlace } from '../../src/operations/in-place.js';
import { sparsifyCopy } from '../../src/operations/copy.js';
import { walk as walkNodes } from '../../src/analyze/diskmap.js';
import { placeAt } from '../helpers/disk-builder.js';

const missing = ['sgdisk', 'mke2fs', 'debugfs', 'e2fsck'].filter((t) => !haveTool(t));
const skip = missing.length ? `missing tools: ${missing.join(', ')}` : false;

/** The partition's filesystem image with `fillMiB` of 0x01 in a file, then the file deleted. */
function filledFs(dir: string, type: 'ext2' | 'ext4', bytes: number, fillMiB: number): string {
  const root = join(dir, `root-${type}`);
  mkdirSync(root, { recursive: true });
  writeFileSync(join(root, 'fill'), Buffer.alloc(fillMiB << 20, 1));
  const img = join(dir, `${type}.img`);
  run('truncate', ['-s', String(bytes), img]);
  run('mke2fs', ['-q', '-F', '-t', type, '-E', 'nodiscard', '-d', root, img]);
  run('debugfs', ['-w', '-R', 'rm /fill', img]);
  return img;
}

test('upstream case without LVM: 400 MiB GPT, ext2 + ext4, 310 MiB deleted: du drops by more than 300000 KiB', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir('sparsify-upstream-');
  try {
    const disk = join(dir, 'upstream.img');
    run('truncate', ['-s', '400M', disk]);
    run('sgdisk', ['-n', '1:2048:+32M', '-t', '1:8300', '-n', '2:0:0', '-t', '2:8300', disk]);
    const parts = [1, 2].map((n) => {
      const t = run('sgdisk', ['-i', String(n), disk]);
      const first = Number(/First sector: (\d+)/.exec(t)![1]);
      const last = Number(/Last sector: (\d+)/.exec(t)![1]);
      return { offset: first * 512, size: (last - first + 1) * 512 };
    });
    placeAt(disk, filledFs(dir, 'ext2', parts[0]!.size, 10), parts[0]!.offset);
    placeAt(disk, filledFs(dir, 'ext4', parts[1]!.size, 300), parts[1]!.offset);
    const before = du(disk);
    assert.ok(before >= 310000 * 1024, `input du ${before / 1024} KiB`);
    await sparsifyInPlace({ path: disk });
    const drop = (before - du(disk)) / 1024;
    assert.ok(drop > 300000, `du dropped by ${drop} KiB`);
    for (const [i, p] of parts.entries()) {
      const img = join(dir, `p${i + 1}.check`);
      extract(disk, p.offset, p.size, img);
      const f = e2fsck(img);
      assert.equal(f.status, 0, f.output);
    }
  } finally {
    cleanup();
  }
});

/** Building the LVM image needs LVM's tools on a loop device (root); device-mapper is not needed. */
function canBuildUpstream(): string | false {
  if (process.getuid?.() !== 0) return 'needs root for a loop device (make-upstream.sh)';
  if (runStatus('losetup', ['-f']).status !== 0) return 'no free loop device (make-upstream.sh needs one)';
  if (runStatus('sh', ['-c', 'command -v pvcreate || test -x /usr/sbin/pvcreate || test -x /sbin/pvcreate']).status !== 0) return 'lvm2 not installed';
  return false;
}

/** The upstream image: given by SPARSIFY_UPSTREAM_IMG, or built now with make-upstream.sh. */
function upstreamImage(dir: string): string {
  const disk = join(dir, 'upstream.img');
  const given = process.env['SPARSIFY_UPSTREAM_IMG'];
  if (given) run('cp', ['--sparse=always', given, disk]);
  else run('bash', [repoPath('test', 'fixtures', 'lvm', 'make-upstream.sh'), disk]);
  return disk;
}

const upstreamSkip = skip || (process.env['SPARSIFY_UPSTREAM_IMG'] ? false : canBuildUpstream());

test('upstream case with LVM: in-place, du drops by more than 300000 KiB', { timeout: 300_000, skip: upstreamSkip }, async () => {
  const { dir, cleanup } = tempDir('sparsify-upstream-lvm-');
  try {
    const disk = upstreamImage(dir);
    const before = du(disk);
    assert.ok(before / 1024 >= 310000, `input du ${before / 1024} KiB`);
    await sparsifyInPlace({ path: disk });
    const drop = (before - du(disk)) / 1024;
    assert.ok(drop > 300000, `du dropped by ${drop} KiB`);
  } finally {
    cleanup();
  }
});

test('upstream case with LVM: copy to qcow2, input du >= 310000 KiB, output du <= 15000 KiB', { timeout: 300_000, skip: upstreamSkip }, async () => {
  const { dir, cleanup } = tempDir('sparsify-upstream-lvm-');
  try {
    const disk = upstreamImage(dir);
    assert.ok(du(disk) / 1024 >= 310000, `input du ${du(disk) / 1024} KiB`);
    const out = join(dir, 'out.qcow2');
    await sparsifyCopy({ input: disk, output: out, convert: 'qcow2' });
    const outKiB = du(out) / 1024;
    assert.ok(outKiB <= 15000, `output du ${outKiB} KiB`);
    assert.equal(runStatus('qemu-img', ['check', out]).status, 0);
  } finally {
    cleanup();
  }
});

test('upstream case with LVM: --ignore VG keeps the LV free space; --zero /dev/VG/LV zeroes exactly the LV', { timeout: 300_000, skip: upstreamSkip }, async () => {
  const { dir, cleanup } = tempDir('sparsify-upstream-lvm-');
  try {
    const disk = upstreamImage(dir);
    const ignored = join(dir, 'ignored.img');
    await sparsifyCopy({ input: disk, output: ignored, ignore: ['VG'] });
    // Only the ext2's 10 MiB of deleted data goes; the LV's 300 MiB stays.
    assert.ok(du(ignored) / 1024 > 300000, `with --ignore VG the output keeps the LV's free space (${du(ignored) / 1024} KiB)`);

    const zeroed = join(dir, 'zeroed.img');
    const report = await sparsifyCopy({ input: disk, output: zeroed, zero: ['/dev/VG/LV'] });
    const lv = [...walkNodes(report.map.root)].find((n) => n.device === '/dev/VG/LV');
    assert.ok(lv, 'the LV is in the disk map');
    for (const r of lv.diskRanges) {
      for (let o = r.start; o < r.end; o += 1 << 20) {
        assert.ok(readBytes(zeroed, o, Math.min(1 << 20, r.end - o)).every((b) => b === 0), `LV byte range at ${o} is zero`);
      }
    }
    // The ext2 partition and the PV metadata are untouched by --zero.
    const p1 = report.map.root.children[0]!;
    extract(zeroed, p1.offset, p1.size, join(dir, 'p1.img'));
    assert.equal(e2fsck(join(dir, 'p1.img')).status, 0);
  } finally {
    cleanup();
  }
});
