/**
 * The copy's fast scan for data (copy.ts dataRuns) finds exactly the runs zero-runs.ts's
 * nonZeroRuns finds, block by block: blocks that start with zeros but hold data later, all-zero
 * blocks, a last block shorter than 8 bytes, chunks that start off a block boundary, and one case
 * worked out by hand.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { dataRuns } from '../../src/execute/copy.js';
import { nonZeroRuns } from '../../src/execute/zero-runs.js';

const T = { timeout: 30_000 };
const B = 4096;

function both(buf: Buffer, offset: number): void {
  assert.deepEqual([...dataRuns(buf, offset, B)], [...nonZeroRuns(buf, offset, B)], `offset ${offset}, length ${buf.length}`);
}

test('worked by hand: zeros, a block with data only at its end, a whole zero block, a short tail', T, () => {
  const buf = Buffer.alloc(4 * B + 5);
  buf[B - 1] = 1; // block 0: data only in its last byte
  buf.fill(7, 2 * B, 3 * B); // block 2: data; block 1 and 3 zero
  buf[4 * B + 4] = 9; // the 5-byte tail holds data
  assert.deepEqual([...dataRuns(buf, 0, B)], [
    [0, B],
    [2 * B, 3 * B],
    [4 * B, 4 * B + 5],
  ]);
  both(buf, 0);
});

test('random layouts of data and zeros at aligned and unaligned offsets give the same runs', T, () => {
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let round = 0; round < 300; round++) {
    const len = 1 + rand(40 * B);
    const buf = Buffer.alloc(len);
    randomFillSync(buf);
    // Zero a few stretches, some of them leaving only a block's tail or head with data.
    for (let k = rand(8); k > 0; k--) {
      const s = rand(len);
      buf.fill(0, s, Math.min(len, s + rand(6 * B)));
    }
    if (rand(4) === 0) buf.fill(0);
    const offset = rand(3) === 0 ? rand(B) : rand(1000) * B + (rand(2) ? 0 : rand(B));
    both(buf, offset);
  }
});
