/**
 * A job's states and the only transitions between them, each one transaction:
 *
 *   create ─▶ pending ──claim──▶ running ──end──▶ finished | failed | cancelled
 *                ▲                  │
 *                └── hand back / take over / rerun (the attempt ends; the disk stays locked)
 *             pending ──cancel / orphaned──▶ cancelled | failed
 *
 * The disk is locked in the transaction that creates the job and unlocked in the one that ends
 * it, so a disk is never locked by a job that has ended, nor free while its job may still run.
 * Writes by the running host go through the fence (fence.ts).
 */
import { randomUUID } from 'node:crypto';
import type { Store } from '../store/store.js';
import type { DiskRecord, JobOptions, JobRecord, JobStatus, JobStep, StepName, AttemptOutcome } from '../store/records.js';
import type { JobQueue } from '../queue/types.js';
import { fencedWrite, type Fence } from './fence.js';

const STEPS: readonly StepName[] = ['validating', 'executing', 'finalizing'];
export const ENDED: readonly JobStatus[] = ['finished', 'failed', 'cancelled'];

/** Every disk a job holds locked: its own, and a trim job's other disks of the VM. */
export function lockedDisks(job: Pick<JobRecord, 'diskId' | 'options'>): string[] {
  return [...new Set([job.diskId, ...(job.options.trim?.diskIds ?? [])])];
}

async function unlockAll(tx: Store, job: JobRecord): Promise<void> {
  for (const id of lockedDisks(job)) await tx.disks.unlock(id, job.id);
}

export function newSteps(): JobStep[] {
  return STEPS.map((name) => ({ name, status: 'pending', startedAt: null, endedAt: null, done: 0, total: 0 }));
}

export function newJob(disk: DiskRecord, options: JobOptions, origin: JobRecord['origin']): JobRecord {
  const now = Date.now();
  return {
    id: randomUUID(),
    diskId: disk.id,
    diskName: disk.name,
    domainId: disk.domainId,
    options,
    status: 'pending',
    steps: newSteps(),
    origin,
    createdAt: now,
    queuedAt: now,
    startedAt: null,
    endedAt: null,
    unlockedAt: null,
    attempts: 0,
    host: null,
    cancelRequested: false,
    actualBefore: null,
    actualAfter: null,
    bytesReclaimed: null,
    error: null,
    warnings: [],
  };
}

/** In the transaction that validated the disk: lock it for the job, record the job, queue it. False when the disk is taken. */
export async function create(tx: Store, queue: JobQueue, job: JobRecord): Promise<boolean> {
  if (!(await tx.disks.lock(job.diskId, job.id))) return false;
  await tx.jobs.insert(job);
  await queue.send(job, tx);
  return true;
}

/** pending -> running on `host`, raising the attempt number (the new fence). Undefined when it is not pending. */
export async function claim(store: Store, jobId: string, host: string): Promise<JobRecord | undefined> {
  return store.transaction(async (tx) => {
    const job = await tx.jobs.getForUpdate(jobId);
    if (!job || job.status !== 'pending') return undefined;
    job.status = 'running';
    job.attempts++;
    job.host = host;
    job.startedAt = Date.now();
    job.steps = newSteps();
    // An earlier attempt's figures are not this one's.
    job.result = null;
    if (!(await tx.jobs.write(job, { status: ['pending'], attempt: job.attempts - 1 }))) return undefined;
    await tx.jobs.startAttempt({ jobId: job.id, attempt: job.attempts, diskId: job.diskId, host, startedAt: job.startedAt });
    return job;
  });
}

/**
 * The record a transition writes: a copy, handed back to the caller's object only once committed,
 * so nobody reading the runner's in-memory job sees an end the database does not have yet.
 */
function draft(job: JobRecord): JobRecord {
  return structuredClone(job);
}

function settle(job: JobRecord, status: JobStatus, error: string | null): void {
  const now = Date.now();
  job.status = status;
  job.error = error;
  job.endedAt = now;
  job.unlockedAt = now;
  const stepEnd = status === 'finished' ? 'finished' : status === 'failed' ? 'failed' : 'cancelled';
  for (const s of job.steps) {
    if (s.status === 'running') s.status = stepEnd;
    if (s.status === 'pending') s.status = 'cancelled';
  }
}

/** running -> finished | failed | cancelled, by the holder of `fence`, unlocking the disk. */
export async function end(store: Store, job: JobRecord, fence: Fence, status: 'finished' | 'failed' | 'cancelled', error: string | null): Promise<void> {
  const next = draft(job);
  settle(next, status, error);
  await store.transaction(async (tx) => {
    await fencedWrite(tx, next, fence);
    await unlockAll(tx, next);
    await tx.jobs.endAttempt(next.id, fence.attempt, status, error);
  });
  Object.assign(job, next);
}

/** running -> pending by the holder of `fence` (this host stops): another host, or this one after a restart, runs it again. */
export async function handBack(store: Store, queue: JobQueue, job: JobRecord, fence: Fence, why: string): Promise<void> {
  const next = draft(job);
  requeue(next);
  await store.transaction(async (tx) => {
    await fencedWrite(tx, next, fence);
    await tx.jobs.endAttempt(next.id, fence.attempt, 'handed-back', why);
    await queue.send(next, tx);
  });
  Object.assign(job, next);
}

function requeue(job: JobRecord): void {
  job.status = 'pending';
  job.host = null;
  job.queuedAt = Date.now();
  job.steps = newSteps();
}

/**
 * A running job whose host is gone (non-responsive, or this host before a restart): run it again
 * when attempts remain and `rerun` allows it (both modes are safe to repeat), else end it. A
 * cancel asked meanwhile wins. Guarded by the attempt it was at, so two hosts taking over the same
 * job agree on one outcome. Returns what happened, or undefined when someone else already acted.
 */
export async function takeOver(store: Store, queue: JobQueue, stored: JobRecord, opts: { reason: string; rerun: boolean; maxAttempts: number; outcome: AttemptOutcome }): Promise<'requeued' | 'failed' | 'cancelled' | undefined> {
  const job = draft(stored);
  const attempt = job.attempts;
  let result: 'requeued' | 'failed' | 'cancelled';
  if (job.cancelRequested) {
    settle(job, 'cancelled', `cancelled at user request (${opts.reason})`);
    result = 'cancelled';
  } else if (!opts.rerun || attempt >= opts.maxAttempts) {
    settle(job, 'failed', `${opts.reason}${opts.rerun ? ` (after ${attempt} attempts)` : ''}`);
    result = 'failed';
  } else {
    requeue(job);
    result = 'requeued';
  }
  return store.transaction(async (tx) => {
    if (!(await tx.jobs.write(job, { status: ['running'], attempt }))) return undefined;
    await tx.jobs.endAttempt(job.id, attempt, opts.outcome, opts.reason);
    if (result === 'requeued') await queue.send(job, tx);
    else await unlockAll(tx, job);
    return result;
  });
}

/** pending -> cancelled (never started), unlocking the disk. False when it is no longer pending. */
export async function cancelPending(store: Store, stored: JobRecord, error: string, status: 'cancelled' | 'failed' = 'cancelled'): Promise<boolean> {
  const job = draft(stored);
  settle(job, status, error);
  return store.transaction(async (tx) => {
    if (!(await tx.jobs.write(job, { status: ['pending'], attempt: job.attempts }))) return false;
    await unlockAll(tx, job);
    return true;
  });
}
