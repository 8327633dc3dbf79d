/**
 * Helpers shared by the vdi/vmdk/vpc/vhdx tests: a raw source with known data and holes, whole-image
 * read comparison, extent checks against `qemu-img map`, and writing an image with our writers.
 */
import assert from 'node:assert/strict';
import { openSync, writeSync, closeSync, ftruncateSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { BlockFile } from '../../src/io/file.js';
import { RawImage } from '../../src/formats/raw.js';
import type { DiskImage, FormatDriver, ImageExtent, OpenContext, WriterContext } from '../../src/formats/types.js';
import { run } from '../helpers/fixtures.js';

const MiB = 1 << 20;

/** A raw file with random data at odd offsets, holes, explicit zeros and data up to the last byte. */
export function makeRaw(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const put = (start: number, len: number, zero = false): void => {
      const b = Buffer.alloc(len);
      if (!zero) {
        randomFillSync(b);
        for (let i = 0; i < len; i += 512) b[i] = 0x5a;
      }
      writeSync(fd, b, 0, len, start);
    };
    put(0, 1.5 * MiB);
    put(5 * MiB + 4096 + 100, 70000);
    put(9 * MiB, 64 * 1024);
    put(12 * MiB - 512, 1024);
    put(14 * MiB, 2 * MiB, true);
    put(17 * MiB + 333, 2 * MiB + 1000);
    put(size - 1000, 1000);
  } finally {
    closeSync(fd);
  }
}

/** Read the whole image with odd-sized reads, several in flight, and compare with the raw file. */
export async function assertReadsLike(img: DiskImage, rawPath: string): Promise<void> {
  const raw = readFileSync(rawPath);
  assert.equal(img.virtualSize >= raw.length, true, `virtual size ${img.virtualSize} < raw ${raw.length}`);
  const chunk = 777 * 1024 + 512 + 13;
  const jobs: Promise<void>[] = [];
  for (let off = 0; off < img.virtualSize; off += chunk) {
    const len = Math.min(chunk, img.virtualSize - off);
    jobs.push(
      (async () => {
        const b = Buffer.alloc(len);
        await img.read(b, off);
        const want = Buffer.alloc(len);
        if (off < raw.length) raw.copy(want, 0, off, Math.min(raw.length, off + len));
        if (!b.equals(want)) {
          let i = 0;
          while (b[i] === want[i]) i++;
          assert.fail(`${img.format}: byte ${off + i} differs from raw`);
        }
      })(),
    );
    if (jobs.length >= 4) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
}

export async function collectExtents(img: DiskImage, start = 0, end = img.virtualSize): Promise<ImageExtent[]> {
  const out: ImageExtent[] = [];
  for await (const e of img.extents(start, end)) out.push(e);
  return out;
}

/** Extents are contiguous, ascending, cover the range, and non-data ranges are zero in the raw file. */
export async function assertExtentsSane(img: DiskImage, rawPath: string): Promise<ImageExtent[]> {
  const ext = await collectExtents(img);
  const raw = readFileSync(rawPath);
  let pos = 0;
  for (const e of ext) {
    assert.equal(e.start, pos, 'extents contiguous');
    assert.ok(e.end > e.start);
    if (e.kind !== 'data') {
      const s = raw.subarray(Math.min(e.start, raw.length), Math.min(e.end, raw.length));
      assert.ok(s.every((x) => x === 0), `${e.kind} extent ${e.start}-${e.end} holds data in raw`);
    }
    pos = e.end;
  }
  assert.equal(pos, img.virtualSize);
  // A partial middle range must agree with the full map.
  const mid = await collectExtents(img, 5 * MiB + 7, 13 * MiB + 3);
  assert.equal(mid[0]!.start, 5 * MiB + 7);
  assert.equal(mid[mid.length - 1]!.end, 13 * MiB + 3);
  return ext;
}

interface QemuMapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** Our data/non-data split must equal qemu-img map's, byte for byte. */
export function assertMatchesQemuMap(ext: ImageExtent[], path: string, fmt: string): void {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', fmt, path])) as QemuMapEntry[];
  const toRanges = (list: { start: number; end: number; data: boolean }[]): string =>
    list
      .reduce<{ start: number; end: number; data: boolean }[]>((acc, r) => {
        const l = acc[acc.length - 1];
        if (l && l.data === r.data && l.end === r.start) l.end = r.end;
        else acc.push({ ...r });
        return acc;
      }, [])
      .map((r) => `${r.start}-${r.end}:${r.data ? 'D' : '-'}`)
      .join(' ');
  const ours = toRanges(ext.map((e) => ({ start: e.start, end: e.end, data: e.kind === 'data' })));
  const theirs = toRanges(map.map((m) => ({ start: m.start, end: m.start + m.length, data: m.data })));
  assert.equal(ours, theirs, `extents of ${basename(path)} differ from qemu-img map`);
}

export async function openWith(driver: FormatDriver, path: string, ctx: OpenContext = testContext([])): Promise<DiskImage> {
  const f = await BlockFile.open(path);
  try {
    return await driver.open(f, ctx);
  } catch (e) {
    await f.close();
    throw e;
  }
}

/** An OpenContext that opens backing files with the given drivers (by name), paths relative to the referrer. */
export function testContext(drivers: FormatDriver[]): OpenContext {
  const ctx: OpenContext = {
    async openBacking(path, format, referrer) {
      const { dirname, resolve } = await import('node:path');
      const full = resolve(dirname(referrer), path);
      const d = drivers.find((x) => x.name === format);
      if (!d) throw new Error(`test context: no driver for ${format}`);
      return openWith(d, full, ctx);
    },
  };
  return ctx;
}

/**
 * Convert a raw file with our writer: data extents only, in odd-sized ascending writes, each from a
 * buffer of its own. `inFlight`: the writes are not awaited one by one (the writer must keep them
 * in order, and may write several side by side).
 */
export async function writeWith(
  driver: FormatDriver,
  rawPath: string,
  outPath: string,
  options: Record<string, string> = {},
  wctx: WriterContext = { compress: false, threads: 2 },
  virtualSize?: number,
  { step = 300 * 1024 + 7, inFlight = false }: { step?: number; inFlight?: boolean } = {},
): Promise<void> {
  const src = await RawImage.open(await BlockFile.open(rawPath));
  let w;
  try {
    w = await driver.createWriter!(outPath, virtualSize ?? src.virtualSize, new Map(Object.entries(options)), wctx);
  } catch (e) {
    await src.close();
    throw e;
  }
  try {
    const running: Array<Promise<void>> = [];
    for await (const e of src.extents(0, src.virtualSize)) {
      if (e.kind !== 'data') continue;
      for (let off = e.start; off < e.end; off += step) {
        const b = Buffer.alloc(Math.min(step, e.end - off));
        await src.read(b, off);
        if (inFlight) running.push(w.write(b, off));
        else await w.write(b, off);
      }
    }
    await Promise.all(running);
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  } finally {
    await src.close();
  }
}

export function qemuInfo(path: string, fmt?: string): { format: string; 'virtual-size': number; 'format-specific'?: { data?: Record<string, unknown> } } {
  return JSON.parse(run('qemu-img', ['info', '--output=json', ...(fmt ? ['-f', fmt] : []), path]));
}

/** qemu-img compare says identical (exit 0); qemu-img check passes where the format has a check. */
export function assertQemuAgrees(rawPath: string, out: string, fmt: string, check: boolean): void {
  run('qemu-img', ['compare', '-f', 'raw', '-F', fmt, rawPath, out]);
  if (check) run('qemu-img', ['check', '-f', fmt, out]);
}
