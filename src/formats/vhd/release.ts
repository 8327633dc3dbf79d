/**
 * Giving a dynamic VHD's host space back with holes (layout.ts for the on-disk facts), two ways
 * that never touch a byte the guest reads:
 * - space nobody references (neither metadata nor a BAT entry's slot): dropped slots, copies an
 *   interrupted compaction left, padding. Punched whole, so that it reads as zero: qemu appends
 *   blocks there without zeroing them;
 * - the guest's free space inside blocks that stay allocated: the host filesystem blocks wholly
 *   inside it are punched, and read as zero (a dynamic disk reads a block's data as it is).
 * Both punch only where there is data (SEEK_DATA), so a second run issues nothing.
 */
import { statfs } from 'node:fs/promises';
import { Extents, type Range } from '../../io/extents.js';
import { yieldToEventLoop } from '../discard-types.js';
import { NO_BLOCK, type VhdLayout } from './layout.js';

const SECTOR = 512;
const CHUNK = 1 << 20;

/** The unit holes are punched in: the host filesystem's block (4096 when it says something odd). */
export async function punchUnit(path: string): Promise<number> {
  const bs = Number((await statfs(path)).bsize);
  return bs >= SECTOR && (bs & (bs - 1)) === 0 && bs <= 1 << 20 ? bs : 4096;
}

/**
 * Punch what holds data in [start, end) that nobody references. Returns the bytes that were not
 * zero already (a slot punched off its filesystem blocks leaves zeroed partial blocks that
 * SEEK_DATA still reports; those are left alone).
 */
export async function releaseUnreferenced(layout: VhdLayout, start: number, end: number): Promise<number> {
  const file = layout.file;
  if (end <= start) return 0;
  let released = 0;
  const buf = Buffer.allocUnsafe(CHUNK);
  for (const r of Extents.of(start, end).subtract(layout.used())) {
    for (let pos = r.start; pos < r.end; ) {
      const d = file.seekData(pos);
      if (d < 0 || d >= r.end) break;
      const h = Math.min(file.seekHole(d), r.end);
      if (h <= d) break;
      for (let at = d; at < h; at += CHUNK) {
        const piece = buf.subarray(0, Math.min(CHUNK, h - at));
        await file.readExact(piece, at, 'vpc unreferenced space');
        if (!piece.some((x) => x !== 0)) continue;
        file.release(at, piece.length);
        released += piece.length;
      }
      pos = h;
    }
    await yieldToEventLoop();
  }
  return released;
}

/**
 * Punch the host filesystem blocks that lie wholly inside `inside` (guest ranges) within blocks
 * the BAT points at. Returns the guest ranges that now read as zero.
 */
export async function punchInsideBlocks(layout: VhdLayout, inside: Extents, unit: number): Promise<Extents> {
  const { file, blockSize: bs, bitmapSize } = layout;
  const zeroed: Range[] = [];
  let turns = 0;
  for (const r of inside) {
    for (let pos = r.start; pos < r.end; ) {
      const i = Math.floor(pos / bs);
      const stop = Math.min(r.end, (i + 1) * bs);
      const e = i < layout.entries ? layout.entry(i) : NO_BLOCK;
      if (e !== NO_BLOCK) {
        // host = guest + base inside this block; slots need not sit on filesystem blocks.
        const base = e * SECTOR + bitmapSize - i * bs;
        const hs = Math.ceil((base + pos) / unit) * unit;
        const he = Math.floor((base + stop) / unit) * unit;
        if (he > hs) {
          for (let at = hs; at < he; ) {
            const d = file.seekData(at);
            if (d < 0 || d >= he) break;
            const h = Math.min(file.seekHole(d), he);
            if (h <= d) break;
            file.release(d, h - d);
            at = h;
          }
          zeroed.push({ start: hs - base, end: he - base });
        }
      }
      pos = stop;
      if (++turns % 1024 === 0) await yieldToEventLoop();
    }
  }
  return new Extents(zeroed);
}
