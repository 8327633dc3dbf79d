/**
 * In place on storage that cannot punch holes (oVirt's NFS < 4.2 case), for real: an NTFS
 * filesystem mounted through ntfs-3g (FUSE), where fallocate(PUNCH_HOLE) fails. Without
 * --compact a qcow2 is refused with virt-sparsify's exit code 3 and a hint; with --compact it is
 * compacted and truncated, and the mount's free space grows by what the file lost. A vdi always
 * compacts. A raw image, which has nothing to compact, is refused either way.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, statSync, statfsSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, run, runStatus, haveTool, releaseAll } from '../helpers/fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { makeGuestDisk, guestProblems, type GuestDisk } from '../crash/scenario.js';

const tools = ['mkntfs', 'ntfs-3g', 'mke2fs', 'e2fsck', 'debugfs', 'qemu-img'].filter((t) => !haveTool(t));
const skip = tools.length ? `missing tools: ${tools.join(', ')}` : process.getuid?.() !== 0 ? 'mounting needs root' : !existsSync('/dev/fuse') ? 'no /dev/fuse' : false;

let tmp: { dir: string; cleanup: () => void };
let mnt = '';
let mounted = false;
let guest: GuestDisk;

before(() => {
  if (skip) return;
  tmp = tempDir('sparsify-noholes-cli-');
  guest = makeGuestDisk(tmp.dir, 32);
  const img = join(tmp.dir, 'ntfs.img');
  run('truncate', ['-s', '200M', img]);
  run('mkntfs', ['-q', '-F', '-f', img]);
  mnt = join(tmp.dir, 'mnt');
  mkdirSync(mnt);
  run('ntfs-3g', [img, mnt]);
  mounted = true;
});

after(() =>
  releaseAll(
    () => mounted && runStatus('umount', [mnt]).status !== 0 && runStatus('umount', ['-l', mnt]),
    () => tmp?.cleanup(),
  ),
);

const free = (): number => {
  const s = statfsSync(mnt);
  return s.bavail * s.bsize;
};

test('no holes: qcow2 is refused without --compact (exit 3) and compacted with it', { skip, timeout: 300_000 }, () => {
  const p = join(mnt, 'disk.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', guest.raw, p]);
  const r = sparsify(['--in-place', p]);
  assert.equal(r.status, 3, r.stdout + r.stderr);
  assert.match(r.stderr, /cannot punch holes or discard; --compact gives the space back/);
  assert.equal(runStatus('qemu-img', ['check', p]).status, 0, 'nothing was changed');
  const len0 = statSync(p).size;
  const free0 = free();
  const c = sparsify(['--in-place', '--compact', p]);
  assert.equal(c.status, 0, c.stderr);
  const len1 = statSync(p).size;
  assert.ok(len0 - len1 > 8 << 20, `${len0} -> ${len1}`);
  const chk = runStatus('qemu-img', ['check', p]);
  assert.equal(chk.status, 0, chk.stdout);
  assert.deepEqual(guestProblems(p, 'qcow2', guest, tmp.dir), []);
  // What the file lost is what the filesystem gained (NTFS's own metadata may move a cluster or two).
  const gained = free() - free0;
  assert.ok(Math.abs(gained - (len0 - len1)) < 1 << 20, `free space grew by ${gained}, the file shrank by ${len0 - len1}`);
});

test('no holes: vdi compacts without being asked; raw is refused either way', { skip, timeout: 300_000 }, () => {
  const v = join(mnt, 'disk.vdi');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', guest.raw, v]);
  const len0 = statSync(v).size;
  const r = sparsify(['--in-place', v]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(statSync(v).size <= len0 - (4 << 20), `${len0} -> ${statSync(v).size}`);
  assert.equal(runStatus('qemu-img', ['check', v]).status, 0);
  assert.deepEqual(guestProblems(v, 'vdi', guest, tmp.dir), []);

  const raw = join(mnt, 'disk.raw');
  copyFileSync(guest.raw, raw);
  for (const args of [['--in-place', raw], ['--in-place', '--compact', raw]]) {
    const x = sparsify(args);
    assert.equal(x.status, 3, x.stdout + x.stderr);
    assert.match(x.stderr, /cannot punch holes or discard/);
  }
});
