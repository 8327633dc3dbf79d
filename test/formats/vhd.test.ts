import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { vpcDriver } from '../../src/formats/vhd.js';
import { vhdChecksum } from '../../src/formats/common/vhd-footer.js';
import { CorruptError } from '../../src/io/errors.js';
import { haveTool, run, tempDir } from '../helpers/fixtures.js';
import {
  assertExtentsSane, assertMatchesQemuMap, assertQemuAgrees, assertReadsLike, collectExtents, makeRaw, openWith, qemuInfo,
  testContext, writeWith,
} from './format-helpers.js';

const MiB = 1 << 20;
const skip = haveTool('qemu-img') ? false : 'qemu-img not installed';
// 24 MiB + 5 sectors is not a multiple of any CHS geometry: qemu rounds it up unless force_size.
const SIZE = 24 * MiB + 5 * 512;

test('vpc: reads qemu-made dynamic and fixed images, CHS-rounded and forced sizes', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    for (const opts of ['subformat=dynamic', 'subformat=fixed', 'subformat=dynamic,force_size=on', 'subformat=fixed,force_size=on']) {
      const p = join(dir, `img-${opts.replace(/[=,]/g, '_')}.vhd`);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', opts, raw, p]);
      assert.ok(vpcDriver.probe(readFileSync(p).subarray(0, 512)) || opts.includes('fixed'));
      const img = await openWith(vpcDriver, p);
      try {
        assert.equal(img.virtualSize, qemuInfo(p, 'vpc')['virtual-size'], opts);
        if (opts.includes('force_size')) assert.equal(img.virtualSize, SIZE);
        else assert.ok(img.virtualSize > SIZE);
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        if (opts.includes('dynamic')) assertMatchesQemuMap(ext, p, 'vpc');
      } finally {
        await img.close();
      }
    }
  } finally {
    cleanup();
  }
});

test('vpc: writer output matches the source per qemu-img (exact and CHS-rounded sizes)', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    for (const opts of [{ subformat: 'dynamic' }, { subformat: 'fixed' }, { subformat: 'dynamic', force_size: 'off' }] as Record<string, string>[]) {
      const out = join(dir, `out-${Object.values(opts).join('-')}.vhd`);
      await writeWith(vpcDriver, raw, out, opts);
      assertQemuAgrees(raw, out, 'vpc', false);
      const info = qemuInfo(out, 'vpc');
      assert.equal(info.format, 'vpc');
      if (opts.force_size === 'off') assert.ok(info['virtual-size'] > SIZE && info['virtual-size'] < SIZE + MiB);
      else assert.equal(info['virtual-size'], SIZE);
      const img = await openWith(vpcDriver, out);
      try {
        assert.equal(img.virtualSize, info['virtual-size']);
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        if (opts.subformat === 'dynamic') assertMatchesQemuMap(ext, out, 'vpc');
      } finally {
        await img.close();
      }
    }
    await assert.rejects(writeWith(vpcDriver, raw, join(dir, 'x.vhd'), { subformat: 'sparse' }), /valid values: dynamic, fixed/);
  } finally {
    cleanup();
  }
});

test('vpc: bad footer checksum is refused naming the file', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const p = join(dir, 'bad.vhd');
    run('qemu-img', ['create', '-f', 'vpc', '-o', 'subformat=fixed', p, '4M']);
    const size = readFileSync(p).length;
    const fd = openSync(p, 'r+');
    writeSync(fd, Buffer.from([0x77]), 0, 1, size - 512 + 40);
    closeSync(fd);
    await assert.rejects(openWith(vpcDriver, p), (e: Error) => e instanceof CorruptError && e.message.includes(p) && /checksum/.test(e.message));
  } finally {
    cleanup();
  }
});

/**
 * qemu cannot create differencing VHDs, so build one by hand from a qemu-made parent: one block
 * allocated, its sector bitmap marking sectors 8..15 and 100 as present in the child.
 */
test('vpc: differencing disk reads through the parent locator', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, 8 * MiB);
    const parent = join(dir, 'parent.vhd');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', 'force_size=on', raw, parent]);
    const pf = readFileSync(parent);
    const footer = Buffer.from(pf.subarray(0, 512));
    footer.writeUInt32BE(4, 60);
    footer.writeUInt32BE(vhdChecksum(footer, 64), 64);
    const dh = Buffer.from(pf.subarray(512, 1536));
    const entries = dh.readUInt32BE(28);
    const name = Buffer.from('.\\parent.vhd', 'utf16le');
    // Layout: footer copy, header, BAT at 1536, locator at 2048, block (bitmap + 2 MiB) at 2560.
    dh.write('W2ru', 576, 'latin1');
    dh.writeUInt32BE(1, 580);
    dh.writeUInt32BE(name.length, 584);
    dh.writeBigUInt64BE(2048n, 592);
    Buffer.from('parent.vhd', 'utf16le').swap16().copy(dh, 64);
    dh.writeUInt32BE(vhdChecksum(dh, 36), 36);
    const bat = Buffer.alloc(512, 0xff);
    bat.writeUInt32BE(2560 / 512, 4); // block 1 (2..4 MiB)
    const bitmap = Buffer.alloc(512);
    bitmap[1] = 0xff; // sectors 8..15
    bitmap[12] = 0x08; // sector 100 (byte 12, bit 7-(100&7)=3)
    const data = Buffer.alloc(2 * MiB);
    randomFillSync(data);
    const child = Buffer.concat([footer, dh, bat, name, Buffer.alloc(512 - name.length), bitmap, data, footer]);
    const cp = join(dir, 'child.vhd');
    writeFileSync(cp, child);
    assert.ok(entries >= 2);
    const want = readFileSync(raw);
    data.copy(want, 2 * MiB + 8 * 512, 8 * 512, 16 * 512);
    data.copy(want, 2 * MiB + 100 * 512, 100 * 512, 101 * 512);
    const expected = join(dir, 'expected.raw');
    writeFileSync(expected, want);
    const img = await openWith(vpcDriver, cp, testContext([vpcDriver]));
    try {
      assert.equal(img.layers().length, 2);
      await assertReadsLike(img, expected);
      const ext = await collectExtents(img, 2 * MiB, 2 * MiB + 101 * 512);
      assert.deepEqual(
        ext.map((e) => [e.start - 2 * MiB, e.end - 2 * MiB, e.kind]),
        // The parent has a hole there: only the child's sectors are data.
        [[0, 8 * 512, 'unallocated'], [8 * 512, 16 * 512, 'data'], [16 * 512, 100 * 512, 'unallocated'], [100 * 512, 101 * 512, 'data']],
      );
    } finally {
      await img.close();
    }
  } finally {
    cleanup();
  }
});
