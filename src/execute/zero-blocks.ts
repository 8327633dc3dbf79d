/**
 * Blocks that read as zero in an image's own data: what `qemu-img convert` would leave out of a
 * new image. Compaction discards them too (a block of zeros becomes an unallocated or zero
 * cluster, which reads the same), so the compacted image is as short as a converted copy would
 * be. Only the image's own data extents are read (unallocated and zero ranges cost nothing), in
 * large reads with a few in flight.
 */
import type { DiskImage } from '../formats/types.js';
import { Extents, ExtentsBuilder } from '../io/extents.js';
import { isZero } from './zero-runs.js';

const CHUNK = 4 << 20;
const IN_FLIGHT = 4;

/** The own data extents of `image` inside `ranges`. */
async function ownData(image: DiskImage, ranges: Extents): Promise<Extents> {
  const b = new ExtentsBuilder();
  for (const r of ranges) {
    const it = image.ownExtents ? image.ownExtents(r.start, r.end) : image.extents(r.start, r.end);
    for await (const e of it) if (e.kind === 'data') b.add(e.start, e.end);
  }
  return b.build();
}

/**
 * Whole blocks of `granularity` (aligned to it) inside `ranges` whose bytes, as the guest reads
 * them from this image's own data, are all zero.
 */
export async function zeroBlocks(image: DiskImage, ranges: Extents, granularity: number, signal?: AbortSignal): Promise<Extents> {
  const candidates = (await ownData(image, ranges)).alignInward(granularity);
  const out = new ExtentsBuilder();
  const chunk = Math.max(granularity, Math.floor(CHUNK / granularity) * granularity);
  const pieces: Array<{ start: number; end: number }> = [];
  for (const r of candidates) for (let p = r.start; p < r.end; p += chunk) pieces.push({ start: p, end: Math.min(r.end, p + chunk) });
  const results: Array<Array<[number, number]>> = new Array(pieces.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    const buf = Buffer.allocUnsafe(chunk);
    for (let i = next++; i < pieces.length && !signal?.aborted; i = next++) {
      const { start, end } = pieces[i]!;
      const view = buf.subarray(0, end - start);
      await image.read(view, start);
      const zeros: Array<[number, number]> = [];
      for (let off = 0; off < view.length; off += granularity) {
        if (isZero(view.subarray(off, off + granularity))) zeros.push([start + off, start + off + granularity]);
      }
      results[i] = zeros;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  for (const zs of results) for (const [s, e] of zs ?? []) out.add(s, e);
  return out.build();
}
