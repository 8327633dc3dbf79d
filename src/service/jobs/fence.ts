/**
 * The fencing rule, in one place. Each claim of a job raises its attempt number, and the claimant
 * keeps that number as its token. Every write a runner makes for its job (progress, the end, the
 * disk's unlock) is conditional on the job still running at that attempt, and a copy is renamed
 * over the disk only after the same check. A host that comes back after its job was taken over
 * finds its token stale: its writes match nothing and it stops, touching nothing more.
 */
import type { Store } from '../store/store.js';
import type { JobRecord } from '../store/records.js';

export interface Fence {
  jobId: string;
  attempt: number;
}

/** This runner's attempt is no longer the job's current one: another host owns the job now. */
export class FencedOut extends Error {
  constructor(readonly fence: Fence) {
    super(`job ${fence.jobId}: attempt ${fence.attempt} is no longer current (the job was taken over); this host stops touching it`);
  }
}

export const fenceOf = (job: JobRecord): Fence => ({ jobId: job.id, attempt: job.attempts });

/** Write the running job as the holder of `fence`. Returns whether a cancel was asked for. */
export async function fencedWrite(store: Store, job: JobRecord, fence: Fence): Promise<{ cancelRequested: boolean }> {
  const r = await store.jobs.write(job, { status: ['running'], attempt: fence.attempt });
  if (!r) throw new FencedOut(fence);
  return r;
}

/** Check before an irreversible step (the rename over the disk). Throws FencedOut when stale. */
export async function assertCurrent(store: Store, fence: Fence): Promise<{ cancelRequested: boolean }> {
  const s = await store.jobs.fenceState(fence.jobId, fence.attempt);
  if (!s.current) throw new FencedOut(fence);
  return { cancelRequested: s.cancelRequested };
}
