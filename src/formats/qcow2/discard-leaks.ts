/**
 * The last step of a qcow2 in-place discard: count the references to every host cluster (walking
 * the L1 and every L2 table, as `qemu-img check` does), lower a refcount above its references to
 * them (flushed): to 0 for a cluster nobody references, to the count of fragments still in a
 * cluster holding compressed data. Then punch every unreferenced cluster with refcount 0 that still
 * holds data in the file. This gives back what an interrupted earlier run leaked or had not
 * punched yet. A cluster with more references than its refcount means a corrupt image: nothing is
 * punched then. (A standard data cluster counted twice but referenced once is left: its COPIED
 * flag would have to change with it.)
 */
import type { BlockFile } from '../../io/file.js';
import type { Qcow2Header } from './header.js';
import type { Qcow2Refcounts } from './discard-refcount.js';
import { L2_COMPRESSED, standardHost, type Qcow2Layout } from './discard-layout.js';
import { yieldToEventLoop, type DiscardContext } from '../discard-types.js';

/** Above this many host clusters the counts would be too large (512-byte clusters, huge files). */
const MAX_CLUSTERS = 2 ** 28;
/** Reference counts saturate here (then the cluster's refcount is not lowered). */
const SATURATED = 255;


export interface LeakResult {
  /** Clusters whose refcount went from above 0 to 0. */
  leaked: number;
  /** Host bytes punched. */
  punched: number;
}

export async function reclaimLeaks(file: BlockFile, h: Qcow2Header, layout: Qcow2Layout, refcounts: Qcow2Refcounts, ctx: DiscardContext): Promise<LeakResult> {
  const cs = h.clusterSize;
  const fileClusters = Math.ceil(file.size / cs);
  if (fileClusters > MAX_CLUSTERS) {
    ctx.warn('the qcow2 image has too many clusters to look for leaked ones; skipped');
    return { leaked: 0, punched: 0 };
  }
  const refs = new Uint8Array(fileClusters + 1);
  /** Clusters only compressed entries point into (their refcount is their fragment count). */
  const compressedOnly = new Uint8Array(Math.ceil(fileClusters / 8) + 1);
  const other = new Uint8Array(Math.ceil(fileClusters / 8) + 1);
  const set = (c: number, compressed = false): void => {
    if (c >= fileClusters) return;
    if (refs[c]! < SATURATED) refs[c]!++;
    if (compressed) compressedOnly[c >> 3]! |= 1 << (c & 7);
    else other[c >> 3]! |= 1 << (c & 7);
  };
  const onlyCompressed = (c: number): boolean =>
    (compressedOnly[c >> 3]! & (1 << (c & 7))) !== 0 && (other[c >> 3]! & (1 << (c & 7))) === 0;
  layout.markMetadata((c) => set(c));

  for (let i = 0; i < layout.l1Size; i++) {
    if (layout.l2Offset(i) === 0) continue;
    const t = await layout.readL2(i);
    for (let e = 0; e < t.length; e += layout.entryBytes) {
      const hi = t.readUInt32BE(e);
      const lo = t.readUInt32BE(e + 4);
      if (hi & L2_COMPRESSED) {
        for (const c of layout.compressedClusters(hi, lo, 0)) set(c, true);
        continue;
      }
      const host = standardHost(hi, lo);
      if (host !== 0) set(layout.dataCluster(host, 0));
    }
    if (i % 64 === 63) await yieldToEventLoop();
  }

  // Leaks: a refcount above the references (none, or fewer fragments).
  let leaked = 0;
  let corrupt = false;
  for (const { index, first } of refcounts.coveredBlocks()) {
    const value = await refcounts.blockValues(index);
    const n = Math.min(refcounts.perBlock, fileClusters - first);
    for (let k = 0; k < n; k++) {
      const c = first + k;
      const rc = value(k);
      const r = refs[c]!;
      if (rc > 0 && r === 0) {
        await refcounts.set(c, 0);
        leaked++;
      } else if (rc > r && r < SATURATED && onlyCompressed(c)) {
        await refcounts.set(c, r);
        leaked++;
      } else if (rc < r) corrupt = true;
    }
  }
  await refcounts.flush();
  if (corrupt) {
    refcounts.dropCache();
    ctx.warn("some referenced qcow2 clusters have refcount 0 (the image needs 'qemu-img check -r all'); free clusters were not punched");
    return { leaked, punched: 0 };
  }

  // Release unreferenced clusters (refcount 0 now) where the file holds data.
  let punched = 0;
  if (!ctx.release) {
    refcounts.dropCache();
    return { leaked, punched };
  }
  let pos = cs; // the header cluster is always referenced
  while (pos < file.size) {
    const data = file.seekData(pos);
    if (data < 0) break;
    const hole = file.seekHole(data);
    if (hole <= data) break;
    let c = Math.floor(data / cs);
    const last = Math.ceil(hole / cs);
    while (c < last) {
      if (refs[c]! > 0 || (await refcounts.get(c)) !== 0) {
        c++;
        continue;
      }
      let d = c + 1;
      while (d < last && refs[d] === 0 && (await refcounts.get(d)) === 0) d++;
      file.release(c * cs, (d - c) * cs);
      punched += (d - c) * cs;
      c = d;
    }
    pos = last * cs;
    await yieldToEventLoop();
  }
  refcounts.dropCache();
  return { leaked, punched };
}
