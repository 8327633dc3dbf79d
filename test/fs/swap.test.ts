import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { swapReader } from '../../src/fs/swap.js';
import { tempDir, run, haveTool, garbageFile, openRawVolume, clobber, patchFile as patch } from '../helpers/fixtures.js';

const SIZE = 16 << 20;
const UUID = '0b4c1a38-5ad4-4d7a-9e3c-2f6a0c1e9d11';

/** Overwrite every free range with garbage (0x5a), as the worst-case executor would. */
const skip = !haveTool('mkswap') ? 'mkswap not installed' : false;

test('swap: body after the first page is free; label and UUID survive clobbering', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'swap.img');
    garbageFile(img, SIZE);
    run('mkswap', ['-L', 'myswap', '-U', UUID, '-p', '4096', img]);
    const { volume, close } = await openRawVolume(img);
    try {
      assert.equal(await swapReader.probe(volume), true);
      const a = await swapReader.analyze(volume);
      assert.equal(a.trusted, true, a.warnings.join('; '));
      assert.equal(a.type, 'swap');
      assert.equal(a.label, 'myswap');
      assert.equal(a.uuid, UUID);
      assert.equal(a.freeBytes, SIZE - 4096);
      assert.deepEqual(a.free.toArray(), [{ start: 4096, end: SIZE }]);
      clobber(img, a.free);
    } finally {
      await close();
    }
    const out = run('blkid', ['-p', '-o', 'export', img]);
    assert.match(out, /TYPE=swap/);
    assert.match(out, /LABEL=myswap/);
    assert.match(out, new RegExp(`UUID=${UUID}`));
    const sl = run('swaplabel', [img]);
    assert.match(sl, /LABEL: myswap/);
    assert.match(sl, new RegExp(`UUID:\\s+${UUID}`));
  } finally {
    t.cleanup();
  }
});

test('swap: 64 KiB page size is recognised', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'swap64k.img');
    garbageFile(img, 4 << 20, 0x33);
    run('mkswap', ['-p', '65536', img]);
    const { volume, close } = await openRawVolume(img);
    try {
      const a = await swapReader.analyze(volume);
      assert.equal(a.trusted, true);
      assert.equal(a.blockSize, 65536);
      assert.deepEqual(a.free.toArray(), [{ start: 65536, end: 4 << 20 }]);
    } finally {
      await close();
    }
  } finally {
    t.cleanup();
  }
});

test('swap: a hibernation signature keeps the whole area', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'hib.img');
    garbageFile(img, 4 << 20, 0x11);
    run('mkswap', [img]);
    for (const magic of ['S1SUSPEND', 'LINHIB0001', 'ULSUSPEND']) {
      patch(img, 4096 - 10, Buffer.from(magic.padEnd(10, '\0'), 'latin1'));
      const { volume, close } = await openRawVolume(img);
      try {
        assert.equal(await swapReader.probe(volume), true);
        const a = await swapReader.analyze(volume);
        assert.equal(a.trusted, false);
        assert.equal(a.free.isEmpty, true);
        assert.match(a.warnings.join(' '), /holds a hibernation image/);
      } finally {
        await close();
      }
    }
  } finally {
    t.cleanup();
  }
});

test('swap: bad headers are kept whole, garbage is not swap', { timeout: 300_000, skip }, async () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'bad.img');
    garbageFile(img, 1 << 20, 0x22);
    {
      const { volume, close } = await openRawVolume(img);
      assert.equal(await swapReader.probe(volume), false);
      await close();
    }
    run('mkswap', [img]);
    patch(img, 1024, Buffer.from([7, 0, 0, 0])); // unknown version
    {
      const { volume, close } = await openRawVolume(img);
      const a = await swapReader.analyze(volume);
      assert.equal(a.trusted, false);
      assert.equal(a.free.isEmpty, true);
      await close();
    }
    patch(img, 1024, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])); // version 1, last page 0
    {
      const { volume, close } = await openRawVolume(img);
      const a = await swapReader.analyze(volume);
      assert.equal(a.trusted, false);
      await close();
    }
    // A header claiming more pages than the volume holds: free stops at the volume's end.
    patch(img, 1024, Buffer.from([1, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f]));
    {
      const { volume, close } = await openRawVolume(img);
      const a = await swapReader.analyze(volume);
      assert.deepEqual(a.free.toArray(), [{ start: 4096, end: 1 << 20 }]);
      await close();
    }
  } finally {
    t.cleanup();
  }
});
