import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, truncateSync } from 'node:fs';
import { luksReader } from '../../src/layout/luks.js';
import { tempDir, run, haveTool, garbageFile, openRawVolume } from '../helpers/fixtures.js';

const skip = !haveTool('cryptsetup') ? 'cryptsetup not installed' : false;

function luksFormat(img: string, type: 'luks1' | 'luks2'): void {
  // cryptsetup formats a plain file without device-mapper; cheap key derivation keeps it fast.
  const args = ['luksFormat', '-q', '--type', type, '--key-file', '-', '--pbkdf-force-iterations', '1000'];
  if (type === 'luks2') args.push('--pbkdf', 'pbkdf2', '--cipher', 'aes-xts-plain64');
  args.push(img);
  run('cryptsetup', args, { input: 'passphrase' });
}

function uuidOf(img: string): string {
  return run('cryptsetup', ['luksUUID', img]).trim();
}

test('luks2: detected, kept whole, details from the header', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'luks2.img');
    garbageFile(img, 20 << 20, 0x44);
    luksFormat(img, 'luks2');
    run('cryptsetup', ['config', '--label', 'secret', img]);
    const uuid = uuidOf(img);
    const { volume, close } = await openRawVolume(img);
    try {
      assert.equal(await luksReader.probe(volume), true);
      assert.equal(luksReader.scope, 'any');
      const a = await luksReader.analyze(volume);
      assert.equal(a.type, 'luks2');
      assert.deepEqual(a.children, []);
      assert.equal(a.free.isEmpty, true);
      assert.deepEqual(a.info, ['encrypted (LUKS2) volume kept whole: it cannot be sparsified without its key']);
      assert.equal(a.details?.uuid, uuid);
      assert.equal(a.details?.label, 'secret');
      assert.equal(a.details?.cipher, 'aes-xts-plain64');
      assert.deepEqual(a.warnings, []);
    } finally {
      await close();
    }
    // Wipe the primary binary header: the secondary copy (at 16 KiB by default) still identifies it.
    const fd = openSync(img, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0x44), 0, 4096, 0);
    closeSync(fd);
    const { volume: v2, close: c2 } = await openRawVolume(img);
    try {
      assert.equal(await luksReader.probe(v2), true);
      const a = await luksReader.analyze(v2);
      assert.equal(a.type, 'luks2');
      assert.equal(a.details?.uuid, uuid);
      assert.match(a.warnings.join(' '), /secondary/);
      assert.equal(a.free.isEmpty, true);
    } finally {
      await c2();
    }
  } finally {
    t.cleanup();
  }
});

test('luks1: detected with cipher and UUID', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'luks1.img');
    garbageFile(img, 8 << 20, 0x55);
    luksFormat(img, 'luks1');
    const { volume, close } = await openRawVolume(img);
    try {
      assert.equal(await luksReader.probe(volume), true);
      const a = await luksReader.analyze(volume);
      assert.equal(a.type, 'luks1');
      assert.equal(a.details?.uuid, uuidOf(img));
      assert.match(String(a.details?.cipher), /^aes-xts-plain64$/);
      assert.match(a.info![0]!, /LUKS1/);
      assert.deepEqual(a.children, []);
    } finally {
      await close();
    }
  } finally {
    t.cleanup();
  }
});

test('luks: garbage, tiny volumes and a secondary header at the wrong offset are not LUKS', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'junk.img');
    garbageFile(img, 1 << 20);
    {
      const { volume, close } = await openRawVolume(img);
      assert.equal(await luksReader.probe(volume), false);
      await close();
    }
    // "SKUL" magic at 16 KiB whose hdr_offset does not say 16 KiB.
    const fake = Buffer.alloc(512);
    Buffer.from('534b554cbabe', 'hex').copy(fake, 0);
    fake.writeUInt16BE(2, 6);
    fake.writeBigUInt64BE(0x8000n, 256);
    const fd = openSync(img, 'r+');
    writeSync(fd, fake, 0, 512, 0x4000);
    closeSync(fd);
    {
      const { volume, close } = await openRawVolume(img);
      assert.equal(await luksReader.probe(volume), false);
      await close();
    }
    truncateSync(img, 100);
    {
      const { volume, close } = await openRawVolume(img);
      assert.equal(await luksReader.probe(volume), false);
      await close();
    }
  } finally {
    t.cleanup();
  }
});
