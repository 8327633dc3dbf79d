/** Turning an allocation bitmap (bit set = used, LSB first) into free runs. */
import { ExtentsBuilder, type Extents } from '../../io/extents.js';

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
