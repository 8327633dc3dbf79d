import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, closeSync, readFileSync, statSync, readdirSync } from 'node:fs';
import { vmdkDriver } from '../../src/formats/vmdk/index.js';
import { CorruptError, SparsifyError } from '../../src/io/errors.js';
import { haveTool, run, tempDir } from '../helpers/fixtures.js';
import {
  assertExtentsSane, assertMatchesQemuMap, assertQemuAgrees, assertReadsLike, makeRaw, openWith, qemuInfo, writeWith,
} from './format-helpers.js';

const MiB = 1 << 20;
const skip = haveTool('qemu-img') ? false : 'qemu-img not installed';
const SIZE = 40 * MiB + 3 * 512;

test('vmdk: reads qemu-made images of every subformat', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    for (const sub of ['monolithicSparse', 'streamOptimized', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']) {
      const sd = join(dir, sub);
      run('mkdir', [sd]);
      const p = join(sd, 'disk.vmdk');
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${sub}`, raw, p]);
      assert.ok(vmdkDriver.probe(readFileSync(p).subarray(0, 4096)), `${sub} probes`);
      const img = await openWith(vmdkDriver, p);
      try {
        assert.equal(img.virtualSize, qemuInfo(p)['virtual-size'], sub);
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        if (!sub.endsWith('Flat')) assertMatchesQemuMap(ext, p, 'vmdk');
        assert.equal(img.layers()[0]!.details!['subformat'], sub);
      } finally {
        await img.close();
      }
      if (sub === 'twoGbMaxExtentSparse') assert.ok(readdirSync(sd).length >= 2, 'descriptor plus extent files');
    }
  } finally {
    cleanup();
  }
});

test('vmdk: writers produce images qemu-img checks and compares identical', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    const cases: [string, Record<string, string>, boolean][] = [
      ['sparse', { subformat: 'monolithicSparse' }, false],
      ['stream', { subformat: 'streamOptimized' }, false],
      ['compress', {}, true],
    ];
    for (const [name, opts, compress] of cases) {
      const out = join(dir, `${name}.vmdk`);
      await writeWith(vmdkDriver, raw, out, opts, { compress, threads: 2 });
      assertQemuAgrees(raw, out, 'vmdk', true);
      const info = qemuInfo(out);
      assert.equal(info.format, 'vmdk');
      assert.equal(info['virtual-size'], SIZE);
      const want = name === 'sparse' ? 'monolithicSparse' : 'streamOptimized';
      assert.equal((info['format-specific']?.data as { 'create-type'?: string })['create-type'], want);
      if (name !== 'sparse') assert.ok(statSync(out).size < 8 * MiB, 'compressed output is small');
      const img = await openWith(vmdkDriver, out);
      try {
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        assertMatchesQemuMap(ext, out, 'vmdk');
      } finally {
        await img.close();
      }
    }
    await assert.rejects(writeWith(vmdkDriver, raw, join(dir, 'x.vmdk'), { subformat: 'monolithicSparse' }, { compress: true, threads: 1 }), SparsifyError);
    await assert.rejects(writeWith(vmdkDriver, raw, join(dir, 'x.vmdk'), { cluster_size: '65536' }), /valid options: subformat/);
  } finally {
    cleanup();
  }
});

test('vmdk: truncated grain directory is a CorruptError naming file and offset', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    const p = join(dir, 'bad.vmdk');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, p]);
    const size = statSync(p).size;
    const fd = openSync(p, 'r+');
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(size / 512)); // GD starting at end of file
    writeSync(fd, b, 0, 8, 56);
    closeSync(fd);
    await assert.rejects(
      openWith(vmdkDriver, p),
      (e: Error) => e instanceof CorruptError && e.message.includes(p) && /grain directory at 0x[0-9a-f]+ .*truncated/.test(e.message),
    );
  } finally {
    cleanup();
  }
});
