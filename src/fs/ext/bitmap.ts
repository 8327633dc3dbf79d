/** Allocation bitmaps (bit set = used, LSB first): reading them in large runs, and turning them into free runs. */
import { ExtentsBuilder, type Extents } from '../../io/extents.js';
import { CorruptError } from '../../io/errors.js';
import type { Volume } from '../../layout/volume.js';
import { crc32cRaw } from '../../io/checksums.js';
import { INCOMPAT, RO_COMPAT, type ExtSuperblock } from './superblock.js';
import type { GroupDesc } from './groups.js';

/** Largest single read when fetching runs of adjacent bitmap blocks (flex_bg packs them together). */
const MAX_BITMAP_READ = 4 << 20;

/**
 * One block per group (its block or inode bitmap, as `blockOf` picks), read with adjacent blocks
 * coalesced into large reads. Yields in block order, not group order.
 */
export async function* readGroupBlocks(
  vol: Volume,
  s: ExtSuperblock,
  groups: readonly GroupDesc[],
  blockOf: (d: GroupDesc) => number,
  what: string,
): AsyncGenerator<[GroupDesc, Buffer]> {
  const sorted = [...groups].sort((a, b) => blockOf(a) - blockOf(b));
  let i = 0;
  while (i < sorted.length) {
    let j = i + 1;
    while (j < sorted.length && blockOf(sorted[j]!) === blockOf(sorted[j - 1]!) + 1 && (j - i + 1) * s.blockSize <= MAX_BITMAP_READ) j++;
    const first = blockOf(sorted[i]!);
    if (first < s.firstDataBlock || first + (j - i) > s.blocksCount) {
      throw new CorruptError(`ext: ${what} of group ${sorted[i]!.index} at block ${first} lies outside the filesystem`);
    }
    const buf = await vol.readAt(first * s.blockSize, (j - i) * s.blockSize);
    for (let k = i; k < j; k++) yield [sorted[k]!, buf.subarray((k - i) * s.blockSize, (k - i + 1) * s.blockSize)];
    i = j;
  }
}

/**
 * Does a bitmap's metadata_csum checksum hold? It is the crc32c of the bitmap's first `bytes`,
 * stored whole with 64-byte descriptors, else its low 16 bits. Without metadata_csum there is none.
 */
export function bitmapChecksumHolds(s: ExtSuperblock, bitmap: Buffer, bytes: number, stored: number): boolean {
  if (!(s.roCompat & RO_COMPAT.METADATA_CSUM)) return true;
  const computed = crc32cRaw(s.csumSeed, bitmap.subarray(0, bytes));
  const full = s.descSize >= 0x3c && s.incompat & INCOMPAT.BIT64;
  return full ? computed === stored : (computed & 0xffff) === (stored & 0xffff);
}

/** Is any bit in [from, to) of `bitmap` set? */
export function anyBitSet(bitmap: Uint8Array, from: number, to: number): boolean {
  let bit = from;
  for (; bit < to && bit & 7; bit++) if (bitmap[bit >> 3]! & (1 << (bit & 7))) return true;
  for (; bit + 8 <= to; bit += 8) if (bitmap[bit >> 3]) return true;
  for (; bit < to; bit++) if (bitmap[bit >> 3]! & (1 << (bit & 7))) return true;
  return false;
}

/** Free runs among the first `nbits` bits of `bitmap`, in bit numbers; also the count of clear bits. */
export function freeRuns(bitmap: Uint8Array, nbits: number): { runs: Extents; free: number } {
  const b = new ExtentsBuilder();
  let free = 0;
  let runStart = -1;
  const fullBytes = nbits >> 3;
  for (let i = 0; i < fullBytes; i++) {
    const v = bitmap[i]!;
    if (v === 0) {
      if (runStart < 0) runStart = i * 8;
      free += 8;
      continue;
    }
    if (v === 0xff) {
      if (runStart >= 0) {
        b.add(runStart, i * 8);
        runStart = -1;
      }
      continue;
    }
    for (let k = 0; k < 8; k++) {
      const bit = i * 8 + k;
      if (v & (1 << k)) {
        if (runStart >= 0) {
          b.add(runStart, bit);
          runStart = -1;
        }
      } else {
        if (runStart < 0) runStart = bit;
        free++;
      }
    }
  }
  for (let bit = fullBytes * 8; bit < nbits; bit++) {
    if (bitmap[bit >> 3]! & (1 << (bit & 7))) {
      if (runStart >= 0) {
        b.add(runStart, bit);
        runStart = -1;
      }
    } else {
      if (runStart < 0) runStart = bit;
      free++;
    }
  }
  if (runStart >= 0) b.add(runStart, nbits);
  return { runs: b.build(), free };
}
