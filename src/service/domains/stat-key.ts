/** Which version of an image file a record or an analysis describes. */
import type { Stats } from 'node:fs';
import type { DiskRecord } from '../store/records.js';

/** What identifies one version of a file on every host (st_dev differs between hosts; the rest does not). */
export function statKey(st: Pick<Stats, 'ino' | 'size' | 'mtimeMs' | 'ctimeMs' | 'blocks'>): string {
  return `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.blocks}`;
}

/** The stat key of the file as the record last saw it: an analysis made under another key is stale. */
export const recordKey = (d: Pick<DiskRecord, 'ino' | 'size' | 'mtimeMs' | 'ctimeMs' | 'actualSize'>): string => `${d.ino}:${d.size}:${d.mtimeMs}:${d.ctimeMs}:${Math.ceil(d.actualSize / 512)}`;

