/**
 * Give back the host space of a VMDK that nothing references: neither the metadata (header,
 * descriptor, directories, tables) nor a grain table entry. Such space holds data when a run was
 * stopped between making a grain table entry durable and releasing its old grain, when a
 * compaction copy never got its entry switched, or when a writer dropped a grain without giving
 * it back (qemu's zeroed-grain writes). Only bytes the file really holds are released (SEEK_DATA),
 * so a second run changes nothing. Runs only after every grain table change is durable.
 */
import type { Extents } from '../../io/extents.js';
import { yieldToEventLoop } from '../discard-types.js';
import type { VmdkLayout } from './layout-discard.js';

/** Ranges released between two looks at the event loop. */
const RANGES_PER_YIELD = 256;

/** Host bytes of [from, to) in use: metadata and every referenced grain (whole grains, cut at the file's end). */
export function usedSpace(layout: VmdkLayout): Extents {
  return layout.metadata.union(layout.slots.extents(layout.grainBytes, layout.file.size));
}

/** Release what nothing references in [from, to); returns the bytes released. */
export async function releaseUnreferenced(layout: VmdkLayout, from: number, to: number): Promise<number> {
  const file = layout.file;
  to = Math.min(to, file.size);
  if (from >= to) return 0;
  const free = usedSpace(layout).complement(from, to);
  let released = 0;
  let n = 0;
  for (const r of free) {
    let pos = r.start;
    while (pos < r.end) {
      const data = file.seekData(pos);
      if (data < 0 || data >= r.end) break;
      const hole = Math.min(r.end, file.seekHole(data));
      if (hole <= data) break;
      file.release(data, hole - data);
      released += hole - data;
      pos = hole;
    }
    if (++n % RANGES_PER_YIELD === 0) await yieldToEventLoop();
  }
  return released;
}
