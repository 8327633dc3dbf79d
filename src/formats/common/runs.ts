/**
 * Runs of neighbouring indices, and the table writes built on them: the in-place drivers change
 * scattered entries of on-disk tables (BAT, block map, grain tables) or free scattered slots, and
 * each run of neighbours is one write or one release instead of one per entry.
 */
import type { BlockFile } from '../../io/file.js';

/** Runs of consecutive values in an ascending list: the first value and how many follow it. */
export function* consecutiveRuns(sorted: readonly number[]): Generator<{ first: number; count: number; index: number }> {
  let i = 0;
  while (i < sorted.length) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === sorted[j - 1]! + 1) j++;
    yield { first: sorted[i]!, count: j - i, index: i };
    i = j;
  }
}

/**
 * Write u32 entries `indices` (ascending) of a table at `tableAt` with `value(index)`, one write
 * per run of neighbours; returns each run's bytes by its first index (for an in-memory copy). Each
 * entry is 4 aligned bytes inside one sector, so a torn write leaves every entry old or new. The
 * caller syncs.
 */
export async function writeU32Entries(
  file: BlockFile,
  tableAt: number,
  indices: readonly number[],
  value: (index: number) => number,
  endian: 'le' | 'be',
): Promise<Array<{ first: number; bytes: Buffer }>> {
  const out: Array<{ first: number; bytes: Buffer }> = [];
  for (const run of consecutiveRuns(indices)) {
    const bytes = Buffer.alloc(run.count * 4);
    for (let k = 0; k < run.count; k++) {
      const v = value(run.first + k) >>> 0;
      if (endian === 'le') bytes.writeUInt32LE(v, k * 4);
      else bytes.writeUInt32BE(v, k * 4);
    }
    await file.write(bytes, tableAt + run.first * 4);
    out.push({ first: run.first, bytes });
  }
  return out;
}
