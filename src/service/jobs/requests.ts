/**
 * What clients ask of jobs: start one for a disk (refresh what we know of the disk, then validate
 * and lock in one transaction, oVirt's order of checks), and cancel one, wherever it runs.
 */
import type { ServiceContext } from '../context.js';
import type { CompactionSetting, JobOptions, JobRecord, SparsifyMode } from '../store/records.js';
import type { JobQueue } from '../queue/types.js';
import type { Mounts } from '../domains/mounts.js';
import type { Scanner } from '../domains/scanner.js';
import { validateSparsify, type Refusal } from './validate.js';
import * as lifecycle from './lifecycle.js';
import type { VmRef } from '../vms/attachments.js';

export interface RequestDeps {
  ctx: ServiceContext;
  mounts: Mounts;
  scanner: Scanner;
  queue: JobQueue;
  /** What the up hosts say of a domain: reachable from one of them, and able to punch holes; and its compaction setting. */
  domainState(domainId: string): Promise<{ reachable: boolean; canDiscard: boolean; compaction: CompactionSetting }>;
  /** The VMs that use the disk, every host's, read fresh from this host's libvirt first. */
  vmsOf(d: { domainId: string; rel: string }): Promise<VmRef[]>;
}

export type JobOrRefusal = { job: JobRecord } | { refusal: Refusal };

export async function submit(deps: RequestDeps, diskId: string, options: JobOptions & { mode: SparsifyMode }, origin: JobRecord['origin']): Promise<JobOrRefusal> {
  const { store, bus } = deps.ctx;
  const known = await store.disks.get(diskId);
  if (!known || !known.present) return { refusal: { status: 404, code: 'disk-not-found', detail: 'no such disk' } };
  // Fresh facts where this host reaches the disk: its stat, format, chain, and QEMU's write lock.
  if (!known.lockedBy && deps.mounts.get(known.domainId)?.reachable) await deps.scanner.refreshDisk(diskId);
  const [domain, vms] = await Promise.all([deps.domainState(known.domainId), deps.vmsOf(known)]);
  const r = await store.transaction(async (tx): Promise<JobOrRefusal> => {
    const d = await tx.disks.getForUpdate(diskId);
    const derived = d ? await tx.disks.derivedOf(diskId) : [];
    const refusal = validateSparsify(d, { heldForWriting: d?.inUse ?? false, derived, reachable: domain.reachable, canDiscard: domain.canDiscard, compaction: domain.compaction, mode: options.mode, vms });
    if (refusal) return { refusal };
    const job = lifecycle.newJob(d!, options, origin);
    if (!(await lifecycle.create(tx, deps.queue, job))) return { refusal: { status: 409, code: 'disk-locked', detail: `${d!.name} is locked by another job` } };
    return { job };
  });
  if ('job' in r) {
    bus.publish({ type: 'job', id: r.job.id });
    bus.publish({ type: 'disk', id: diskId });
    bus.publish({ type: 'queued', domainId: r.job.domainId });
  }
  return r;
}

/** Cancel a pending job at once; ask the host running a running one to stop it (it hears within moments). */
export async function cancel(ctx: ServiceContext, jobId: string): Promise<JobOrRefusal> {
  const job = await ctx.store.jobs.get(jobId);
  if (!job) return { refusal: { status: 404, code: 'job-not-found', detail: 'no such job' } };
  if (job.status === 'pending') {
    if (await lifecycle.cancelPending(ctx.store, job, 'cancelled before it started')) {
      await ctx.record({ severity: 'info', type: 'job-cancelled', diskId: job.diskId, jobId: job.id, message: `Sparsify of ${job.diskName} was cancelled before it started` });
      ctx.bus.publish({ type: 'job', id: job.id });
      ctx.bus.publish({ type: 'disk', id: job.diskId });
      return { job };
    }
    // It started meanwhile: cancel it running.
    return cancel(ctx, jobId);
  }
  if (job.status === 'running' && (await ctx.store.jobs.requestCancel(jobId))) {
    ctx.bus.publish({ type: 'cancel', jobId });
    return { job: { ...job, cancelRequested: true } };
  }
  return { refusal: { status: 409, code: 'job-not-active', detail: `job is ${job.status}; only pending or running jobs can be cancelled` } };
}
