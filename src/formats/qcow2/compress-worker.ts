/** piscina worker: compress a batch of qcow2 clusters off the main thread. */
import { compressCluster } from './compression.js';
import type { CompressionType } from './header.js';

export interface CompressTask {
  /** `count` clusters of `clusterSize` bytes, back to back. */
  data: Uint8Array;
  clusterSize: number;
  type: CompressionType;
}

/**
 * One entry per cluster: the compressed bytes, or null when compression does not shrink it.
 * Clusters go in batches because a task round trip costs more than compressing a small cluster.
 */
export default function compress(task: CompressTask): (Uint8Array | null)[] {
  const all = Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
  const out: (Uint8Array | null)[] = [];
  for (let off = 0; off < all.length; off += task.clusterSize) {
    out.push(compressCluster(all.subarray(off, off + task.clusterSize), task.type) ?? null);
  }
  return out;
}
