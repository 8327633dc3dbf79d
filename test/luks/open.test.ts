/**
 * Sparsifying inside LUKS volumes with a key, end to end through the CLI. The images are made by
 * cryptsetup (LUKS2) and qemu-img (LUKS1) from ext4 images with deleted data in their free space;
 * every output is decrypted by cryptsetup alone (and qemu-img for LUKS1) and checked with e2fsck
 * and the checksums of every file; the header must read the same to `cryptsetup luksDump`.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, existsSync, truncateSync } from 'node:fs';
import { tempDir, run, haveTool, allocatedBytes, fileContent, sha256, readBytes, garbageFile } from '../helpers/fixtures.js';
import { makeExtImage, extFileSums, e2fsck } from '../helpers/ext-fixtures.js';
import { sparsify } from '../helpers/cli.js';
import {
  PASSPHRASE, LUKS2_SLACK, encryptLuks2, encryptLuks1, luksDump, decryptWithCryptsetup, decryptWithQemu, extFreeBytes, writeSecretFile, type Luks2Spec,
} from '../helpers/luks-fixtures.js';

const skip = !haveTool('cryptsetup') || !haveTool('qemu-img') ? 'cryptsetup or qemu-img not installed' : false;

interface Built {
  img: string;
  sums: Map<string, string>;
  /** Free bytes of the ext4 inside, as dumpe2fs reports them. */
  fsFree: number;
  dump: string;
}

const FILES = { 'keep/a.bin': fileContent('a', 3 << 20), 'keep/b.txt': Buffer.from('hello\n'), 'gone.bin': fileContent('gone', 12 << 20) };

/** An ext4 image with 12 MiB of deleted data over garbage, checksummed and measured before encryption. */
function plainExt(path: string, dir: string, sizeMiB: number, mkfsArgs: string[] = []): { sums: Map<string, string>; fsFree: number } {
  makeExtImage(path, { type: 'ext4', sizeMiB, files: FILES, remove: ['gone.bin'], mkfsArgs }, dir, true);
  return { sums: extFileSums(path, dir), fsFree: extFreeBytes(path) };
}

function buildLuks2(dir: string, name: string, spec: Luks2Spec, mkfsArgs: string[] = []): Built {
  const img = join(dir, name);
  const { sums, fsFree } = plainExt(img, dir, 40, mkfsArgs);
  truncateSync(img, (40 << 20) + LUKS2_SLACK);
  encryptLuks2(img, spec);
  return { img, sums, fsFree, dump: luksDump(img) };
}

/** The output decrypts (cryptsetup), fscks clean, holds the same files, and has the same header. */
function checkOutput(out: string, built: Built, dir: string, raw = out): void {
  assert.equal(luksDump(raw), built.dump, 'cryptsetup luksDump is unchanged');
  const plain = join(dir, `plain-${Math.random().toString(36).slice(2)}.img`);
  decryptWithCryptsetup(raw, plain, dir);
  const fsck = e2fsck(plain);
  assert.equal(fsck.status, 0, fsck.output);
  assert.deepEqual(extFileSums(plain, dir), built.sums);
}

function reclaimed(input: string, output: string): number {
  return allocatedBytes(input) - allocatedBytes(output);
}

describe('LUKS with a key', { skip, timeout: 300_000 }, () => {
  let t: ReturnType<typeof tempDir>;
  let l2: Built;
  let keyFile: string;

  before(() => {
    t = tempDir('sparsify-luks-');
    l2 = buildLuks2(t.dir, 'l2.img', { pbkdf: 'argon2id' });
    keyFile = join(t.dir, 'key.txt');
    writeSecretFile(keyFile, `${PASSPHRASE}\nsecond line is not part of the key\n`);
  });
  after(() => t.cleanup());

  test('ext4 on LUKS2 (argon2id): copy and in-place give back >= 90% of the free space; the output decrypts to the same files', () => {
    const out = join(t.dir, 'l2-out.img');
    let r = sparsify(['--key', `/dev/sda:file:${keyFile}`, l2.img, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Fill free space in \/dev\/mapper\/luks-[0-9a-f-]{36} with zero/);
    const copyGain = reclaimed(l2.img, out);
    assert.ok(copyGain >= 0.9 * l2.fsFree, `copy gave back ${copyGain} of ${l2.fsFree} free bytes`);
    // The header and keyslot areas are copied byte for byte.
    assert.equal(sha256(readBytes(out, 0, 2 << 20)), sha256(readBytes(l2.img, 0, 2 << 20)));
    checkOutput(out, l2, t.dir);

    const inplace = join(t.dir, 'l2-inplace.img');
    run('cp', ['--sparse=always', l2.img, inplace]);
    r = sparsify(['--in-place', '--key', `all:key:${PASSPHRASE}`, inplace]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Trimming \/dev\/mapper\/luks-[0-9a-f-]{36}/);
    const inPlaceGain = reclaimed(l2.img, inplace);
    assert.ok(inPlaceGain >= 0.9 * l2.fsFree, `in-place gave back ${inPlaceGain} of ${l2.fsFree} free bytes`);
    checkOutput(inplace, l2, t.dir);
  });

  test('--analyze shows the tree inside with what is reclaimable; the LUKS UUID selects the volume', () => {
    const uuid = run('cryptsetup', ['luksUUID', l2.img]).trim();
    const r = sparsify(['--analyze', '--json', '--key', `${uuid}:key:${PASSPHRASE}`, l2.img]);
    assert.equal(r.status, 0, r.stderr);
    const map = JSON.parse(r.stdout) as { reclaimableBytes: number; root: { content: string; details: Record<string, unknown>; children: Array<{ device: string; content: string; freeBytes: number; reclaimableBytes: number }> } };
    assert.equal(map.root.content, 'luks2');
    assert.equal(map.root.details['uuid'], uuid);
    const inner = map.root.children[0]!;
    assert.equal(inner.device, `/dev/mapper/luks-${uuid}`);
    assert.equal(inner.content, 'ext4');
    assert.equal(inner.freeBytes, l2.fsFree);
    assert.ok(inner.reclaimableBytes >= 0.9 * l2.fsFree);
    assert.equal(map.reclaimableBytes, inner.reclaimableBytes);
    const text = sparsify(['--analyze', '--key', `${uuid}:key:${PASSPHRASE}`, l2.img]);
    assert.match(text.stdout, new RegExp(`└─/dev/mapper/luks-${uuid}\\s+[\\d.]+ MiB\\s+ext4`));
  });

  test('no key: kept whole with an info line; a wrong key: a clear error naming the device, exit 1, nothing written', () => {
    const before = sha256(readBytes(l2.img, 0, 44 << 20));
    let r = sparsify([l2.img, join(t.dir, 'nokey.img')]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\/dev\/sda: encrypted \(LUKS2\) volume kept whole/);
    assert.ok(allocatedBytes(join(t.dir, 'nokey.img')) >= allocatedBytes(l2.img) - (1 << 20));

    const out = join(t.dir, 'wrong.img');
    r = sparsify(['--key', '/dev/sda:key:not the passphrase', l2.img, out]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^sparsify: error: \/dev\/sda \(LUKS2 UUID [0-9a-f-]+\): the key given opens no keyslot: wrong key\?$/m);
    assert.equal(existsSync(out), false);

    const inplace = join(t.dir, 'wrong-inplace.img');
    copyFileSync(l2.img, inplace);
    r = sparsify(['--in-place', '--key', 'all:key:nope', inplace]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /wrong key/);
    assert.equal(sha256(readBytes(inplace, 0, 44 << 20)), before);
  });

  test('--keys-from-stdin through a pipe: every line is tried', () => {
    const out = join(t.dir, 'stdin.img');
    const r = sparsify(['--keys-from-stdin', l2.img, out], { input: `wrong one\n${PASSPHRASE}\n` });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(reclaimed(l2.img, out) >= 0.9 * l2.fsFree);
    checkOutput(out, l2, t.dir);
  });

  test('several keyslots: a second passphrase (pbkdf2 beside argon2id) opens the volume too', () => {
    const img = join(t.dir, 'two-slots.img');
    copyFileSync(l2.img, img);
    const newKey = join(t.dir, 'new-key');
    writeSecretFile(newKey, 'second passphrase');
    run('cryptsetup', ['luksAddKey', '-q', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', '-', img, newKey], { input: PASSPHRASE });
    const r = sparsify(['-x', '--analyze', '--key', `/dev/sda:file:${newKey}`, img]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /trying key 1 of 1 on keyslot 1 \(pbkdf2-sha256, 1000 iterations\)/);
    assert.match(r.stderr, /opened with keyslot 1/);
    assert.match(r.stdout, /luks-[0-9a-f-]{36}\s.*ext4/);
  });

  test('swap inside LUKS2: its body is dropped, its header kept', () => {
    const img = join(t.dir, 'swap.img');
    garbageFile(img, 16 << 20);
    run('mkswap', ['-L', 'cryptswap', img, String((16 << 20) / 1024 - LUKS2_SLACK / 1024)]);
    const swapUuid = run('blkid', ['-p', '-o', 'value', '-s', 'UUID', img]).trim();
    encryptLuks2(img, { pbkdf: 'pbkdf2' });
    const out = join(t.dir, 'swap-out.img');
    const r = sparsify(['--key', `all:key:${PASSPHRASE}`, img, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(allocatedBytes(out) < allocatedBytes(img) - (8 << 20), `swap body dropped (${allocatedBytes(out)} of ${allocatedBytes(img)})`);
    const plain = join(t.dir, 'swap-plain.img');
    decryptWithCryptsetup(out, plain, t.dir);
    assert.equal(run('blkid', ['-p', '-o', 'value', '-s', 'UUID', plain]).trim(), swapUuid);
    assert.equal(run('blkid', ['-p', '-o', 'value', '-s', 'LABEL', plain]).trim(), 'cryptswap');
  });

  test('LUKS2 with a damaged primary header: the secondary copy is used', () => {
    const img = join(t.dir, 'damaged.img');
    copyFileSync(l2.img, img);
    run('dd', ['if=/dev/urandom', `of=${img}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none']);
    const out = join(t.dir, 'damaged-out.img');
    const r = sparsify(['--key', `/dev/sda:key:${PASSPHRASE}`, img, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /primary LUKS2 header is damaged \(bad magic\); using the secondary header at 0x4000/);
    assert.ok(reclaimed(img, out) >= 0.9 * l2.fsFree);
    // The damaged header is copied as it is (before cryptsetup, which repairs a header it loads, sees it).
    assert.equal(sha256(readBytes(out, 0, 2 << 20)), sha256(readBytes(img, 0, 2 << 20)));
    checkOutput(out, l2, t.dir);
  });

  test('LUKS2 with 4096-byte sectors, argon2i and a 256-bit key, as qcow2: copy and in-place', () => {
    const built = buildLuks2(t.dir, 'l2-4k.img', { pbkdf: 'argon2i', keyBits: 256, sectorSize: 4096 }, ['-b', '4096']);
    const qcow = join(t.dir, 'l2-4k.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', built.img, qcow]);
    const out = join(t.dir, 'l2-4k-out.qcow2');
    let r = sparsify(['--key', `/dev/sda:key:${PASSPHRASE}`, qcow, out]);
    assert.equal(r.status, 0, r.stderr);
    run('qemu-img', ['check', out]);
    assert.ok(reclaimed(qcow, out) >= 0.9 * built.fsFree, `copy gave back ${reclaimed(qcow, out)} of ${built.fsFree}`);
    const outRaw = join(t.dir, 'l2-4k-out.raw');
    run('qemu-img', ['convert', '-O', 'raw', out, outRaw]);
    checkOutput(outRaw, built, t.dir);

    r = sparsify(['--in-place', '--key', `/dev/sda:key:${PASSPHRASE}`, qcow]);
    assert.equal(r.status, 0, r.stderr);
    run('qemu-img', ['check', qcow]);
    const before = allocatedBytes(built.img);
    assert.ok(before - allocatedBytes(qcow) >= 0.9 * built.fsFree, `in-place left ${allocatedBytes(qcow)} of ${before}`);
    const inRaw = join(t.dir, 'l2-4k-inplace.raw');
    run('qemu-img', ['convert', '-O', 'raw', qcow, inRaw]);
    checkOutput(inRaw, built, t.dir);
  });

  test('LUKS1 from qemu-img (pbkdf2-sha1, aes-cbc-essiv:sha256): copy and in-place; qemu-img decrypts the outputs too', () => {
    const plain = join(t.dir, 'l1-plain.img');
    const { sums, fsFree } = plainExt(plain, t.dir, 40);
    const img = join(t.dir, 'l1.img');
    encryptLuks1(plain, img, { mode: 'cbc-essiv:sha256', hash: 'sha1' });
    const built: Built = { img, sums, fsFree, dump: luksDump(img) };
    assert.match(built.dump, /Cipher mode:\s+cbc-essiv:sha256/);
    const out = join(t.dir, 'l1-out.img');
    let r = sparsify(['--key', `/dev/sda:key:${PASSPHRASE}`, img, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(reclaimed(img, out) >= 0.9 * fsFree, `copy gave back ${reclaimed(img, out)} of ${fsFree}`);
    checkOutput(out, built, t.dir);
    const viaQemu = join(t.dir, 'l1-out-qemu.img');
    decryptWithQemu(out, viaQemu);
    assert.deepEqual(extFileSums(viaQemu, t.dir), sums);

    const inplace = join(t.dir, 'l1-inplace.img');
    run('cp', ['--sparse=always', img, inplace]);
    r = sparsify(['--in-place', '--key', `all:key:${PASSPHRASE}`, inplace]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(reclaimed(img, inplace) >= 0.9 * fsFree);
    checkOutput(inplace, built, t.dir);
  });
});

