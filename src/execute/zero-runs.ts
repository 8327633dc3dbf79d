/** Finding the non-zero parts of a buffer at a fixed granularity, so zero runs become holes. */

const ZERO = Buffer.alloc(1 << 20);

/** True when every byte of `buf` is zero (memcmp against a zero page, 1 MiB at a time). */
export function isZero(buf: Buffer): boolean {
  for (let off = 0; off < buf.length; off += ZERO.length) {
    const n = Math.min(ZERO.length, buf.length - off);
    if (!buf.subarray(off, off + n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}

/**
 * Runs of `buf` (which starts at disk offset `offset`) that hold non-zero data, with block
 * boundaries at multiples of `block` in disk coordinates. Yields [start, end) relative to buf.
 */
export function* nonZeroRuns(buf: Buffer, offset: number, block: number): Generator<[number, number]> {
  if (isZero(buf)) return;
  let runStart = -1;
  let pos = 0;
  while (pos < buf.length) {
    const next = Math.min(buf.length, (Math.floor((offset + pos) / block) + 1) * block - offset);
    const zero = buf.subarray(pos, next).equals(ZERO.subarray(0, next - pos));
    if (!zero && runStart < 0) runStart = pos;
    if (zero && runStart >= 0) {
      yield [runStart, pos];
      runStart = -1;
    }
    pos = next;
  }
  if (runStart >= 0) yield [runStart, buf.length];
}
