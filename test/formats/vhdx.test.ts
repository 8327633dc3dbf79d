import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, writeSync, readSync, closeSync, readFileSync } from 'node:fs';
import { vhdxDriver } from '../../src/formats/vhdx/index.js';
import { vhdxCrc } from '../../src/formats/vhdx/structures.js';
import { SparsifyError } from '../../src/io/errors.js';
import { haveTool, run, tempDir } from '../helpers/fixtures.js';
import {
  assertExtentsSane, assertMatchesQemuMap, assertQemuAgrees, assertReadsLike, makeRaw, openWith, qemuInfo, writeWith,
} from './format-helpers.js';

const MiB = 1 << 20;
const skip = haveTool('qemu-img') ? false : 'qemu-img not installed';
const SIZE = 40 * MiB + 3 * 512;

test('vhdx: reads qemu-made dynamic and fixed images', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    for (const opts of ['subformat=dynamic', 'subformat=dynamic,block_size=1M', 'subformat=fixed']) {
      const p = join(dir, `img-${opts.replace(/[=,]/g, '_')}.vhdx`);
      run('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', opts, raw, p]);
      assert.ok(vhdxDriver.probe(readFileSync(p).subarray(0, 4096)));
      const img = await openWith(vhdxDriver, p);
      try {
        assert.equal(img.virtualSize, qemuInfo(p)['virtual-size'], opts);
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        if (opts.includes('1M')) assert.ok(ext.some((e) => e.kind !== 'data'), 'holes found with 1M blocks');
      } finally {
        await img.close();
      }
    }
  } finally {
    cleanup();
  }
});

test('vhdx: writer output passes qemu-img check and compare', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'src.raw');
    makeRaw(raw, SIZE);
    for (const opts of [{}, { subformat: 'dynamic', block_size: '1M' }, { subformat: 'fixed', block_size: '2M' }] as Record<string, string>[]) {
      const out = join(dir, `out-${Object.values(opts).join('-') || 'default'}.vhdx`);
      await writeWith(vhdxDriver, raw, out, opts);
      assertQemuAgrees(raw, out, 'vhdx', true);
      const info = qemuInfo(out);
      assert.equal(info.format, 'vhdx');
      assert.equal(info['virtual-size'], SIZE);
      const img = await openWith(vhdxDriver, out);
      try {
        await assertReadsLike(img, raw);
        const ext = await assertExtentsSane(img, raw);
        if (opts.block_size === '1M') {
          assert.ok(ext.filter((e) => e.kind === 'data').reduce((n, e) => n + e.end - e.start, 0) < 12 * MiB);
          assertMatchesQemuMapIfKnown(ext, out);
        }
      } finally {
        await img.close();
      }
    }
    await assert.rejects(writeWith(vhdxDriver, raw, join(dir, 'x.vhdx'), { block_size: '3M' }), SparsifyError);
    await assert.rejects(writeWith(vhdxDriver, raw, join(dir, 'x.vhdx'), { log_size: '1M' }), /valid options: subformat .*block_size/);
  } finally {
    cleanup();
  }
});

/** qemu 7.2's vhdx has no block-status: it maps everything as data; compare only when it knows more. */
function assertMatchesQemuMapIfKnown(ext: Parameters<typeof assertMatchesQemuMap>[0], path: string): void {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'vhdx', path])) as { data: boolean }[];
  if (map.some((m) => !m.data)) assertMatchesQemuMap(ext, path, 'vhdx');
}

test('vhdx: a log that needs replay is refused with a clear message', { timeout: 300_000, skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const p = join(dir, 'log.vhdx');
    run('qemu-img', ['create', '-f', 'vhdx', p, '16M']);
    const fd = openSync(p, 'r+');
    try {
      for (const at of [0x10000, 0x20000]) {
        const h = Buffer.alloc(4096);
        readSync(fd, h, 0, 4096, at);
        h.fill(0x42, 48, 64); // log GUID
        h.writeUInt32LE(vhdxCrc(h, 4), 4);
        writeSync(fd, h, 0, 4096, at);
      }
    } finally {
      closeSync(fd);
    }
    await assert.rejects(openWith(vhdxDriver, p), (e: Error) => e instanceof SparsifyError && /log .*replayed/.test(e.message) && e.message.includes(p));
  } finally {
    cleanup();
  }
});
