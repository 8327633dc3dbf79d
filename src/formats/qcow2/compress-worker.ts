/** piscina worker: compress one qcow2 cluster off the main thread. */
import { compressCluster } from './compression.js';
import type { CompressionType } from './header.js';

export interface CompressTask {
  data: Uint8Array;
  type: CompressionType;
}

/** The compressed bytes, or null when compression does not shrink the cluster. */
export default function compress(task: CompressTask): Uint8Array | null {
  const src = Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
  return compressCluster(src, task.type) ?? null;
}
