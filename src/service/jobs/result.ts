/**
 * What an in-place job gave back, from the engine's measured report (never estimated): in all
 * (du before minus after), of which the truncation of a compacted image released, the rest by
 * holes; on a block device the host's allocation is the device's own business, so only what was
 * discarded there and where the image now ends (the size the volume can be reduced to).
 */
import { humanBytes } from '../../index.js';
import type { InPlaceSummary } from '../engine/protocol.js';
import type { CompactionSetting, JobRecord, JobResult } from '../store/records.js';

export function inPlaceResult(r: InPlaceSummary, compaction: CompactionSetting): JobResult {
  const device = r.isBlockDevice;
  const givenBack = device ? null : r.allocatedBefore - r.allocatedAfter;
  return {
    allocatedBefore: device ? null : r.allocatedBefore,
    allocatedAfter: device ? null : r.allocatedAfter,
    givenBack,
    byTruncation: r.releasedByTruncation,
    byHoles: givenBack === null ? null : givenBack - r.releasedByTruncation,
    discarded: r.bytesDiscarded,
    released: r.released,
    compacted: r.compacted,
    endBefore: r.endBefore,
    endAfter: r.endAfter,
    bytesMoved: r.bytesMoved,
    compactableEnd: r.compactableEnd ?? null,
    isBlockDevice: device,
    compaction,
  };
}

/** The success event's words: what came back, and how. */
export function describeSuccess(job: JobRecord): string {
  const r = job.result;
  if (!r) return `${job.diskName} sparsified successfully: ${humanBytes(job.bytesReclaimed ?? 0)} given back (actual size ${humanBytes(job.actualBefore ?? 0)} -> ${humanBytes(job.actualAfter ?? 0)})`;
  const moved = r.compacted ? `compacted (${humanBytes(r.bytesMoved)} moved, image end ${humanBytes(r.endBefore)} -> ${humanBytes(r.endAfter)})` : '';
  if (r.isBlockDevice) {
    const discarded = r.released ? `${humanBytes(r.discarded)} discarded on the device` : '';
    const reduce = r.compacted && r.endAfter < r.endBefore ? `; the volume can be reduced to ${humanBytes(r.endAfter)}` : '';
    return `${job.diskName} sparsified successfully: ${[discarded, moved].filter(Boolean).join(', ') || 'nothing to give back'}${reduce}`;
  }
  // Where compaction's own metadata took a cluster more than holes gave back, the truncation says it all.
  const parts = r.compacted && (r.byHoles ?? 0) <= 0 ? [] : [`${humanBytes(r.byHoles ?? 0)} by holes`];
  if (r.compacted) parts.push(`${humanBytes(r.byTruncation)} by truncation`);
  return `${job.diskName} sparsified successfully: ${humanBytes(Math.max(0, r.givenBack ?? 0))} given back (${parts.join(', ')}; actual size ${humanBytes(r.allocatedBefore ?? 0)} -> ${humanBytes(r.allocatedAfter ?? 0)})${moved ? `, ${moved}` : ''}`;
}
