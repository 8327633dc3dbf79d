/**
 * Runs the jobs this host claims, in the order things happen: claim (the new attempt is the
 * fence), validate again, execute with the engine's progress, finalize (re-measure, re-analyze),
 * end and unlock. Every write for the job goes through the fence; a job is stopped by a cancel
 * (from any host), by the fence (another host owns it now), or by this host shutting down (it is
 * handed back and runs again elsewhere or after the restart). While the database is away the job
 * goes on; its state is written when it is back.
 */
import { statSync, lstatSync } from 'node:fs';
import type { OperationEvents } from '../../index.js';
import type { EnginePool } from '../engine/pool.js';
import type { ServiceContext } from '../context.js';
import type { Logger } from '../logging.js';
import type { JobRecord, JobStep, StepName } from '../store/records.js';
import type { Dispatch, JobQueue } from '../queue/types.js';
import type { Mount, Mounts } from '../domains/mounts.js';
import type { Scanner } from '../domains/scanner.js';
import { heldForWriting } from '../domains/host-probe.js';
import { upVmsOf } from '../vms/attachments.js';
import { isUnavailable } from '../store/db.js';
import { FencedOut, assertCurrent, fenceOf, fencedWrite, type Fence } from './fence.js';
import * as lifecycle from './lifecycle.js';
import { copyAndReplace } from './copy-and-replace.js';
import { compactOption, deviceHeldRefusal, storageCanRelease, storageRefusal } from './validate.js';
import { describeSuccess, inPlaceResult } from './result.js';
import { DEFAULT_COMPACTION } from '../store/records.js';
import { sleep, untilAvailable } from './retry.js';


type StopReason = 'cancel' | 'shutdown' | 'fenced' | 'lost';

const STOP_TEXT: Record<StopReason, string> = { cancel: 'cancelled at user request', shutdown: 'the host is stopping', fenced: 'taken over by another host', lost: 'the disk went away' };

class Stopped extends Error {
  constructor(
    readonly reason: StopReason,
    detail?: string,
  ) {
    super(detail ?? STOP_TEXT[reason]);
  }
}

const domainLost = (m: Mount): Stopped =>
  new Stopped('lost', `storage domain ${m.name} became unreachable during the job (${m.error}); the disk shows as unreachable until it is back`);

/** How often a running job checks that its file is still the disk, and its domain still there. */
const WATCH_MS = 1000;

interface Running {
  job: JobRecord;
  /** Every line it logs carries the job's id. */
  log: Logger;
  fence: Fence;
  ctl: AbortController;
  lastSaved: number;
  lastPublished: number;
  saving: boolean;
  done: Promise<void>;
}

const PUBLISH_EVERY_MS = 250;
const SAVE_EVERY_MS = 1000;

export class JobWorker {
  private readonly running = new Map<string, Running>();
  private unsubscribe: (() => void) | undefined;
  private stopping = false;
  /** Jobs stopped by a shutdown get until then to hand themselves back. */
  private deadline = Infinity;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly mounts: Mounts,
    private readonly scanner: Scanner,
    private readonly queue: JobQueue,
    private readonly engine: EnginePool,
  ) {}

  start(): void {
    this.unsubscribe = this.ctx.bus.subscribe((m) => {
      if (m.type === 'cancel') this.running.get(m.jobId)?.ctl.abort(new Stopped('cancel'));
    });
  }

  /** The freshest record of a job running here (progress newer than the store's). */
  active(id: string): JobRecord | undefined {
    return this.running.get(id)?.job;
  }

  get count(): number {
    return this.running.size;
  }

  /** A delivery from the queue: claim the job, acknowledge, run it. */
  async runDispatch(d: Dispatch): Promise<void> {
    if (this.stopping) return;
    let job: JobRecord | undefined;
    try {
      job = await lifecycle.claim(this.ctx.store, d.jobId, this.ctx.host);
    } catch (e) {
      this.ctx.log.warn(`could not claim the job (${(e as Error).message}); it will be delivered again`, { jobId: d.jobId });
      await d.retry();
      return;
    }
    await d.ack().catch((e: Error) => this.ctx.log.warn(`delivery not acknowledged (${e.message}); a second delivery will find the job claimed`, { jobId: d.jobId }));
    if (!job) return;
    const log = this.ctx.log.child({ jobId: job.id, diskId: job.diskId, disk: job.diskName, attempt: job.attempts });
    const entry: Running = { job, log, fence: fenceOf(job), ctl: new AbortController(), lastSaved: 0, lastPublished: 0, saving: false, done: Promise.resolve() };
    this.running.set(job.id, entry);
    const t0 = Date.now();
    entry.done = this.execute(entry).finally(() => {
      this.running.delete(job!.id);
      if (job!.status !== 'running') this.ctx.metrics.jobEnded(job!, job!.status === 'pending' ? 'handed-back' : job!.status, (Date.now() - t0) / 1000);
    });
    await entry.done;
  }

  private publish(job: JobRecord): void {
    this.ctx.bus.publish({ type: 'job', id: job.id });
  }

  /** A step's write: fenced; while the database is away the job goes on and the next write carries the state. */
  private async save(e: Running): Promise<void> {
    try {
      const r = await fencedWrite(this.ctx.store, e.job, e.fence);
      if (r.cancelRequested) e.ctl.abort(new Stopped('cancel'));
    } catch (err) {
      if (err instanceof FencedOut) {
        e.ctl.abort(new Stopped('fenced'));
        throw err;
      }
      if (!isUnavailable(err)) throw err;
      e.log.warn(`job state not saved (${(err as Error).message}); the next write carries it`);
    }
    this.publish(e.job);
  }

  /** End step `done` (if any) and begin step `name`, in one write. */
  private async step(e: Running, done: JobStep | undefined, name: StepName): Promise<JobStep> {
    this.throwIfStopped(e);
    const now = Date.now();
    if (done) {
      done.status = 'finished';
      done.endedAt = now;
    }
    const s = e.job.steps.find((x) => x.name === name)!;
    s.status = 'running';
    s.startedAt = now;
    await this.save(e);
    return s;
  }

  private throwIfStopped(e: Running): void {
    if (e.ctl.signal.aborted) throw e.ctl.signal.reason instanceof Stopped ? e.ctl.signal.reason : new Stopped('cancel');
  }

  private progress(e: Running, s: JobStep, done: number, total: number): void {
    s.done = done;
    s.total = total;
    const now = Date.now();
    if (now - e.lastPublished >= PUBLISH_EVERY_MS || done >= total) {
      e.lastPublished = now;
      this.ctx.bus.publish({ type: 'progress', jobId: e.job.id, diskId: e.job.diskId, done, total });
    }
    if (now - e.lastSaved >= SAVE_EVERY_MS && !e.saving) {
      e.lastSaved = now;
      e.saving = true;
      // The fence is checked at every progress write; a stale one stops the engine.
      void this.save(e)
        .catch(() => undefined)
        .finally(() => (e.saving = false));
    }
  }

  private async execute(e: Running): Promise<void> {
    const { job, log } = e;
    const { store } = this.ctx;
    log.info(`job started (${job.options.mode})`);
    let watch: NodeJS.Timeout | undefined;
    await this.ctx.record({ severity: 'info', type: 'job-started', diskId: job.diskId, jobId: job.id, message: `Started to sparsify ${job.diskName} on ${this.ctx.host}${job.attempts > 1 ? ` (attempt ${job.attempts})` : ''}` });
    try {
      // validating: the world may have changed since the request was accepted.
      let s = await this.step(e, undefined, 'validating');
      // A trim (jobs/trim.ts) runs only on its VM's host, never from the queue (it comes here only when taken over).
      if (job.options.mode === 'trim') throw new Error(`a trim of VM ${job.options.trim?.vmName ?? job.diskName} runs only where it was started, and that host stopped; ask for the trim again`);
      // What the file is now (the record may predate a restart or an upgrade).
      const d = await untilAvailable(() => this.scanner.refreshDisk(job.diskId), { onWait: () => undefined });
      if (!d || !d.present) throw new Error('the disk is no longer in its storage domain');
      const path = this.mounts.pathOf(d);
      if (d.health !== 'ok' || !d.format) throw new Error(`${d.name} is illegal: ${d.error ?? 'unreadable'}`);
      const vms = await untilAvailable(() => upVmsOf(store, d), { onWait: () => undefined });
      if (vms.length) throw new Error(`${d.name} is attached to VM ${vms.map((v) => `${v.name} (${v.state} on ${v.host})`).join(', ')}; shut the VM down first`);
      // The domain's compaction setting as it is now (any host may have changed it), and the storage as this host sees it.
      const held = deviceHeldRefusal(d);
      if (held) throw new Error(held.detail);
      const compaction = (await untilAvailable(() => store.hosts.domain(d.domainId), { onWait: () => undefined }))?.compaction ?? DEFAULT_COMPACTION;
      if (job.options.mode === 'in-place') {
        const refusal = storageRefusal(d, storageCanRelease(d, this.mounts.get(d.domainId)?.canDiscard ?? false), compaction);
        if (refusal) throw new Error(refusal.detail);
      } else if (d.device) throw new Error(`${d.name} is a block device: copy-and-replace cannot rename a new image over it`);
      watch = setInterval(() => void this.watch(e, d.domainId, path, d.ino), WATCH_MS);
      await this.waitUntilFree(e, path, d.name);
      if (this.ctx.config.testJobDelayMs) await sleep(this.ctx.config.testJobDelayMs, e.ctl.signal);

      s = await this.step(e, s, 'executing');
      // A block device's allocation is the device's own business (statSync follows the symlink to a node of 0 blocks).
      job.actualBefore = d.device ? null : statSync(path).blocks * 512;
      const events: OperationEvents = {
        signal: e.ctl.signal,
        onProgress: (p) => this.progress(e, s, p.done, p.total),
        onWarning: (w) => void (job.warnings.length < 100 && job.warnings.push(w)),
        onStatus: (t) => void (s.detail = t),
      };
      if (job.options.mode === 'in-place') {
        const report = await this.engine.inPlace({ path, format: d.format, ignore: job.options.ignore, zero: job.options.zero, compact: compactOption(compaction) }, events);
        job.result = inPlaceResult(report, compaction);
        clearInterval(watch);
        await this.watch(e, d.domainId, path, d.ino);
      } else {
        await copyAndReplace(this.engine, job, d, path, events, async () => {
          // The last look before the rename changes the file on purpose.
          clearInterval(watch);
          await this.watch(e, d.domainId, path, d.ino);
          this.throwIfStopped(e);
          const r = await untilAvailable(() => assertCurrent(store, e.fence), { deadline: this.deadline });
          if (r.cancelRequested) e.ctl.abort(new Stopped('cancel'));
          this.throwIfStopped(e);
        });
      }
      this.throwIfStopped(e);
      if (s.total === 0) s.total = s.done = 1;
      s.done = s.total;

      // finalizing: the job ends once the disk's new size and analysis are stored.
      s = await this.step(e, s, 'finalizing');
      if (job.result) {
        // In place: the engine measured around the operation itself.
        job.actualBefore = job.result.allocatedBefore;
        job.actualAfter = job.result.allocatedAfter;
        job.bytesReclaimed = job.result.givenBack === null ? null : Math.max(0, job.result.givenBack);
      } else {
        job.actualAfter = d.device ? null : statSync(path).blocks * 512;
        job.bytesReclaimed = job.actualBefore === null || job.actualAfter === null ? null : Math.max(0, job.actualBefore - job.actualAfter);
      }
      await untilAvailable(async () => {
        await this.scanner.refreshDisk(job.diskId);
        await this.scanner.analyze(job.diskId, job.id);
      });
      s.status = 'finished';
      s.endedAt = Date.now();
      await untilAvailable(() => lifecycle.end(store, job, e.fence, 'finished', null), { onWait: (err) => log.warn(`finished; waiting for the database to record it (${err.message})`) });
      log.info('job finished', { bytesReclaimed: job.bytesReclaimed, actualBefore: job.actualBefore, actualAfter: job.actualAfter, result: job.result });
      await this.ctx.record({ severity: 'info', type: 'job-succeeded', diskId: job.diskId, jobId: job.id, message: describeSuccess(job) });
    } catch (err) {
      clearInterval(watch);
      await this.blameLostDomain(e);
      await this.settleFailure(e, err);
    } finally {
      clearInterval(watch);
      this.publish(job);
      this.ctx.bus.publish({ type: 'disk', id: job.diskId });
    }
  }

  /** How a job that did not finish ends, by what stopped it. */
  private async settleFailure(e: Running, err: unknown): Promise<void> {
    const { job, log } = e;
    const { store } = this.ctx;
    const reason = err instanceof FencedOut ? 'fenced' : e.ctl.signal.aborted && e.ctl.signal.reason instanceof Stopped ? e.ctl.signal.reason.reason : err instanceof Stopped ? err.reason : undefined;
    try {
      if (reason === 'fenced') {
        // Another host owns the job: write nothing, touch nothing more.
        log.warn(new FencedOut(e.fence).message);
        return;
      }
      if (reason === 'shutdown') {
        await untilAvailable(() => lifecycle.handBack(store, this.queue, job, e.fence, `${this.ctx.host} stopped`), { deadline: this.deadline });
        await this.ctx.record({ severity: 'warning', type: 'job-restarted', diskId: job.diskId, jobId: job.id, message: `Sparsify of ${job.diskName} was stopped with ${this.ctx.host}; it runs again (safe to repeat)` });
        return;
      }
      const cancelled = reason === 'cancel';
      const msg = cancelled ? 'cancelled at user request' : reason === 'lost' ? (e.ctl.signal.reason as Error).message : (err as Error).message;
      await untilAvailable(() => lifecycle.end(store, job, e.fence, cancelled ? 'cancelled' : 'failed', msg), { deadline: this.stopping ? this.deadline : undefined });
      log.info(cancelled ? 'job cancelled' : `job failed: ${msg}`);
      if (cancelled) await this.ctx.record({ severity: 'info', type: 'job-cancelled', diskId: job.diskId, jobId: job.id, message: `Sparsify of ${job.diskName} was cancelled; the disk is unchanged` });
      else await this.ctx.record({ severity: 'error', type: 'job-failed', diskId: job.diskId, jobId: job.id, message: `Failed to sparsify ${job.diskName}: ${msg}` });
    } catch (e2) {
      if (e2 instanceof FencedOut) log.warn(e2.message);
      // Not recorded (the database stayed away past the shutdown): this host reruns it at its next start, or another takes it over.
      else log.error(`the job's end could not be recorded: ${(e2 as Error).message}`);
    }
  }

  /**
   * The job's file must stay the disk, in a reachable domain: a file replaced or deleted by
   * someone else, or a domain unmounted, stops the engine before it writes anything more there.
   */
  private async watch(e: Running, domainId: string, path: string, ino: number): Promise<void> {
    if (e.ctl.signal.aborted) return;
    let now: number | undefined;
    try {
      now = lstatSync(path).ino;
    } catch {
      now = undefined;
    }
    const m = this.mounts.get(domainId);
    // A file gone may be its whole domain gone: look at the domain now rather than at the next beat.
    if (m && (now !== ino || !m.reachable)) await this.mounts.check();
    if (e.ctl.signal.aborted) return;
    if (m && !m.reachable) return e.ctl.abort(domainLost(m));
    if (now !== ino) e.ctl.abort(new Stopped('lost', `${e.job.diskName} was ${now === undefined ? 'deleted' : 'replaced'} by another process during the job; sparsify stopped and wrote nothing more`));
  }

  /**
   * A job that failed for any reason while its domain went away failed because the domain went
   * away: a step that looks before the watch does (validation's lstat, the engine's open) meets a
   * missing file first, and its ENOENT would hide the cause. Look at the domain now, as the watch
   * would at its next beat, and say so.
   */
  private async blameLostDomain(e: Running): Promise<void> {
    if (e.ctl.signal.aborted) return;
    const m = this.mounts.get(e.job.domainId);
    if (!m) return;
    await this.mounts.check().catch(() => undefined);
    if (!m.reachable && !e.ctl.signal.aborted) e.ctl.abort(domainLost(m));
  }

  /**
   * QEMU's write lock is held by another process. A VM: refuse. On a later attempt it may be the
   * host this job was taken from, still finishing: wait for it (bounded) rather than fail.
   */
  private async waitUntilFree(e: Running, path: string, name: string): Promise<void> {
    const until = Date.now() + 2 * this.ctx.config.hostTimeoutSeconds * 1000;
    while (heldForWriting(path)) {
      if (e.job.attempts <= 1 || Date.now() > until) throw new Error(`${name} is in use: another process (a running VM?) has it open for writing`);
      await sleep(1000, e.ctl.signal);
    }
  }

  /** Stop every job within `timeoutMs`: each hands itself back (it runs again elsewhere or after the restart). */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    this.deadline = Date.now() + timeoutMs;
    this.unsubscribe?.();
    const all = [...this.running.values()];
    for (const r of all) r.ctl.abort(new Stopped('shutdown'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(all.map((r) => r.done)), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }
}
