/**
 * LUKS and LVM nested both ways: an LVM PV inside LUKS1 (qemu-img's luks format, pbkdf2), and a
 * LUKS2 volume inside an LVM LV (cryptsetup). The PVs are made by the LVM tools on a loop device
 * without device-mapper; the ext4 inside the LV by mke2fs. Outputs are decrypted by cryptsetup and
 * qemu-img, never by our code, then checked with e2fsck and file checksums.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { truncateSync } from 'node:fs';
import { tempDir, run, haveTool, allocatedBytes, fileContent, garbageFile, sha256, readBytes } from '../helpers/fixtures.js';
import { makeExtImage, extFileSums, e2fsck, extract } from '../helpers/ext-fixtures.js';
import { placeAt } from '../helpers/disk-builder.js';
import { sparsify } from '../helpers/cli.js';
import {
  PASSPHRASE, LUKS2_SLACK, encryptLuks1, encryptLuks2, luksDump, decryptWithCryptsetup, decryptWithQemu, extFreeBytes, lvmSkipReason, makePvWithLv,
} from '../helpers/luks-fixtures.js';

const skip = !haveTool('cryptsetup') || !haveTool('qemu-img') || !haveTool('lvm') ? 'cryptsetup, qemu-img or lvm not installed' : lvmSkipReason();

const FILES = { 'data/a.bin': fileContent('lvm-a', 2 << 20), 'b.txt': Buffer.from('inside\n'), 'gone.bin': fileContent('lvm-gone', 10 << 20) };

/** ext4 of `size` bytes with 10 MiB of deleted data over garbage: its file sums and free bytes. */
function ext4(path: string, size: number, dir: string): { sums: Map<string, string>; fsFree: number } {
  makeExtImage(path, { type: 'ext4', sizeMiB: size >> 20, files: FILES, remove: ['gone.bin'] }, dir, true);
  return { sums: extFileSums(path, dir), fsFree: extFreeBytes(path) };
}

/** The ext4 in the LV of a decrypted PV: fsck clean and the same files. */
function checkLv(pv: string, lvOffset: number, lvSize: number, sums: Map<string, string>, dir: string): void {
  const lv = join(dir, `lv-${Math.random().toString(36).slice(2)}.img`);
  extract(pv, lvOffset, lvSize, lv);
  const fsck = e2fsck(lv);
  assert.equal(fsck.status, 0, fsck.output);
  assert.deepEqual(extFileSums(lv, dir), sums);
}

describe('LUKS and LVM', { skip, timeout: 240_000 }, () => {
  let t: ReturnType<typeof tempDir>;
  before(() => {
    t = tempDir('sparsify-luks-lvm-');
  });
  after(() => t.cleanup());

  test('LVM on LUKS1 (pbkdf2-sha256, aes-xts-plain64): copy and in-place reclaim the LV\'s free space', () => {
    const pv = join(t.dir, 'pv.img');
    garbageFile(pv, 40 << 20);
    const { lvOffset, lvSize } = makePvWithLv(pv, 'vgsecret', 'root');
    const fs = join(t.dir, 'root.img');
    const { sums, fsFree } = ext4(fs, lvSize, t.dir);
    placeAt(pv, fs, lvOffset);
    const img = join(t.dir, 'lvm-on-luks1.img');
    encryptLuks1(pv, img, { mode: 'xts-plain64', hash: 'sha256' });
    const dump = luksDump(img);

    const analyze = sparsify(['--analyze', '--key', `/dev/sda:key:${PASSPHRASE}`, img]);
    assert.equal(analyze.status, 0, analyze.stderr);
    assert.match(analyze.stdout, /└─\/dev\/mapper\/luks-[0-9a-f-]{36}\s.*lvm2/);
    assert.match(analyze.stdout, /└─\/dev\/vgsecret\/root\s.*ext4/);

    const out = join(t.dir, 'lvm-on-luks1-out.img');
    let r = sparsify(['--key', `/dev/sda:key:${PASSPHRASE}`, img, out]);
    assert.equal(r.status, 0, r.stderr);
    const gain = allocatedBytes(img) - allocatedBytes(out);
    assert.ok(gain >= 0.9 * fsFree, `copy gave back ${gain} of ${fsFree} free bytes`);
    assert.equal(luksDump(out), dump);
    const viaQemu = join(t.dir, 'pv-qemu.img');
    decryptWithQemu(out, viaQemu);
    checkLv(viaQemu, lvOffset, lvSize, sums, t.dir);

    const inplace = join(t.dir, 'lvm-on-luks1-inplace.img');
    run('cp', ['--sparse=always', img, inplace]);
    r = sparsify(['--in-place', '--key', `all:key:${PASSPHRASE}`, inplace]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(allocatedBytes(img) - allocatedBytes(inplace) >= 0.9 * fsFree);
    assert.equal(luksDump(inplace), dump);
    const viaCryptsetup = join(t.dir, 'pv-cryptsetup.img');
    decryptWithCryptsetup(inplace, viaCryptsetup, t.dir);
    checkLv(viaCryptsetup, lvOffset, lvSize, sums, t.dir);
  });

  test('LUKS2 on an LVM LV, named by its LV: copy and in-place', () => {
    const pv = join(t.dir, 'pv2.img');
    garbageFile(pv, 48 << 20);
    const { lvOffset, lvSize } = makePvWithLv(pv, 'vg0', 'crypt');
    const luks = join(t.dir, 'lv-luks.img');
    const { sums, fsFree } = ext4(luks, lvSize - LUKS2_SLACK, t.dir);
    truncateSync(luks, lvSize);
    encryptLuks2(luks, { pbkdf: 'pbkdf2' });
    const dump = luksDump(luks);
    placeAt(pv, luks, lvOffset);

    const out = join(t.dir, 'luks-on-lv-out.img');
    let r = sparsify(['--key', `/dev/vg0/crypt:key:${PASSPHRASE}`, pv, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Fill free space in \/dev\/mapper\/luks-[0-9a-f-]{36} with zero/);
    assert.ok(allocatedBytes(pv) - allocatedBytes(out) >= 0.9 * fsFree, `copy gave back ${allocatedBytes(pv) - allocatedBytes(out)} of ${fsFree}`);
    const check = (img: string): void => {
      const lv = join(t.dir, `lv2-${Math.random().toString(36).slice(2)}.img`);
      extract(img, lvOffset, lvSize, lv);
      assert.equal(luksDump(lv), dump);
      const plain = join(t.dir, `lv2-plain-${Math.random().toString(36).slice(2)}.img`);
      decryptWithCryptsetup(lv, plain, t.dir);
      const fsck = e2fsck(plain);
      assert.equal(fsck.status, 0, fsck.output);
      assert.deepEqual(extFileSums(plain, t.dir), sums);
    };
    check(out);
    // The PV label and metadata before the LV are copied as they are.
    assert.equal(sha256(readBytes(out, 0, lvOffset)), sha256(readBytes(pv, 0, lvOffset)));

    const inplace = join(t.dir, 'luks-on-lv-inplace.img');
    run('cp', ['--sparse=always', pv, inplace]);
    r = sparsify(['--in-place', '--key', `/dev/mapper/vg0-crypt:key:${PASSPHRASE}`, inplace]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(allocatedBytes(pv) - allocatedBytes(inplace) >= 0.9 * fsFree);
    check(inplace);
  });
});
