import { bytes, type Disk, type Job, type JobResult } from './api';

/** The volume under a compacted image on a block device can be reduced to the image's new end. */
export function reducibleTo(r: JobResult | null | undefined): number | null {
  return r && r.isBlockDevice && r.compacted && r.endAfter < r.endBefore ? r.endAfter : null;
}

/** A finished job's measured figures in one line: in all, by holes and by truncation; on a device, what was discarded and where the image ends. */
export function JobFigures({ job }: { job: Job }) {
  const r = job.result;
  if (!r) {
    return (
      <span data-testid="job-figures">
        gave back {bytes(job.bytesReclaimed)} ({bytes(job.actualBefore)} → {bytes(job.actualAfter)})
      </span>
    );
  }
  const compacted = r.compacted ? `; compacted: ${bytes(r.bytesMoved)} moved, image end ${bytes(r.endBefore)} → ${bytes(r.endAfter)}` : '';
  if (r.isBlockDevice) {
    const reduce = reducibleTo(r);
    return (
      <span data-testid="job-figures" data-discarded={r.discarded} data-end-after={r.endAfter}>
        {r.released ? `discarded ${bytes(r.discarded)} on the device` : 'the device cannot discard'}
        {compacted}
        {reduce !== null && <b> · the volume can be reduced to {bytes(reduce)}</b>}
      </span>
    );
  }
  // Where compaction's own metadata took a cluster more than holes gave back, the truncation says it all.
  const ways = [...(r.compacted && (r.byHoles ?? 0) <= 0 ? [] : [`${bytes(r.byHoles)} by holes`]), ...(r.compacted ? [`${bytes(r.byTruncation)} by truncation`] : [])];
  return (
    <span data-testid="job-figures" data-given-back={r.givenBack ?? ''} data-by-holes={r.byHoles ?? ''} data-by-truncation={r.byTruncation}>
      gave back {bytes(Math.max(0, r.givenBack ?? 0))} ({ways.join(', ')}; {bytes(r.allocatedBefore)} → {bytes(r.allocatedAfter)}){compacted}
    </span>
  );
}

/** How an in-place job gives this disk's space back, in words. */
export function storageText(d: Disk): string {
  const release = d.device ? (d.storage.canRelease ? 'the device can discard' : 'the device cannot discard') : d.storage.canRelease ? 'holes can be punched' : 'the storage cannot punch holes';
  return `${release}; in place it is ${d.storage.compacts ? 'compacted' : 'not compacted'} (domain setting: compact ${d.storage.compaction === 'where-no-holes' ? 'where holes cannot be punched' : d.storage.compaction})`;
}
