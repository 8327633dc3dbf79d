/**
 * Host-space writes the in-place code shares: releasing what holds data in a range (a file's
 * holes skipped, so a sparse file is not punched again), and writing zeros a MiB at a time.
 */
import type { BlockFile } from '../../io/file.js';
import { MiB } from './structures.js';

/** Write `length` zero bytes at `offset`, a MiB at a time. */
export async function writeZeroRange(file: BlockFile, offset: number, length: number): Promise<void> {
  const zeros = Buffer.alloc(Math.min(length, MiB));
  for (let p = offset; p < offset + length; p += zeros.length) await file.write(zeros.subarray(0, Math.min(zeros.length, offset + length - p)), p);
}

/** Release what holds data in [start, end): a file's holes are skipped (each punch is a write). */
export function releaseData(file: BlockFile, start: number, end: number): void {
  for (let p = start; p < end; ) {
    const d = file.seekData(p);
    if (d < 0 || d >= end) return;
    const h = Math.min(file.seekHole(d), end);
    file.release(d, h - d);
    p = h;
  }
}
