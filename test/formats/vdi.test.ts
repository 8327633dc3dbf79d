import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, readFileSync } from 'node:fs';
import { vdiDriver } from '../../src/formats/vdi.js';
import { CorruptError, SparsifyError } from '../../src/io/errors.js';
import { haveTool, run, tempDir } from '../helpers/fixtures.js';
import {
  assertExtentsSane, assertMatchesQemuMap, assertQemuAgrees, assertReadsLike, makeRaw, openWith, qemuInfo, writeWith,
} from './format-helpers.js';

const MiB = 1 << 20;
const skip = haveTool('qemu-img') ? false : 'qemu-img not installed';

test('vdi: reads qemu-made dynamic and static images', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, 24 * MiB + 5 * 512);
    for (const stat of ['off', 'on']) {
      const p = join(dir, `img-${stat}.vdi`);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', '-o', `static=${stat}`, raw, p]);
      assert.ok(vdiDriver.probe(readFileSync(p).subarray(0, 4096)));
      const img = await openWith(vdiDriver, p);
      try {
        assert.equal(img.virtualSize, qemuInfo(p)['virtual-size']);
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        assertMatchesQemuMap(ext, p, 'vdi');
        if (stat === 'off') assert.ok(ext.some((e) => e.kind === 'unallocated'));
      } finally {
        await img.close();
      }
    }
  } finally {
    cleanup();
  }
});

test('vdi: writer output passes qemu-img check and compare', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, 24 * MiB + 5 * 512);
    for (const stat of ['off', 'on']) {
      const out = join(dir, `out-${stat}.vdi`);
      await writeWith(vdiDriver, raw, out, { static: stat });
      assertQemuAgrees(raw, out, 'vdi', true);
      const info = qemuInfo(out);
      assert.equal(info.format, 'vdi');
      assert.equal(info['virtual-size'], 24 * MiB + 5 * 512);
      const img = await openWith(vdiDriver, out);
      try {
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        assertMatchesQemuMap(ext, out, 'vdi');
      } finally {
        await img.close();
      }
    }
    // Bad options are refused with the valid list.
    await assert.rejects(writeWith(vdiDriver, raw, join(dir, 'x.vdi'), { bogus: '1' }), /valid options: static/);
    await assert.rejects(writeWith(vdiDriver, raw, join(dir, 'x.vdi'), { static: 'maybe' }), SparsifyError);
  } finally {
    cleanup();
  }
});

test('vdi: block index past end of file is a clear error', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, 8 * MiB);
    const p = join(dir, 'bad.vdi');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', raw, p]);
    const h = readFileSync(p);
    const bmap = h.readUInt32LE(0x154);
    const fd = openSync(p, 'r+');
    const e = Buffer.alloc(4);
    e.writeUInt32LE(0x7fff0000);
    writeSync(fd, e, 0, 4, bmap);
    closeSync(fd);
    await assert.rejects(openWith(vdiDriver, p), (err: Error) => err instanceof CorruptError && /block map entry 0 .*beyond end of file/.test(err.message));
    // A truncated block map.
    const fd2 = openSync(p, 'r+');
    writeSync(fd2, Buffer.from([0xff, 0xff, 0xff, 0x0f]), 0, 4, 0x180);
    closeSync(fd2);
    await assert.rejects(openWith(vdiDriver, p), CorruptError);
  } finally {
    cleanup();
  }
});
