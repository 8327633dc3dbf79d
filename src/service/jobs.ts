/**
 * Storage jobs: a request is validated and its disk locked in one synchronous transaction (so of
 * two concurrent requests exactly one wins), then the job runs its steps (validating, executing
 * with the engine's progress, finalizing with the sizes re-measured) and unlocks the disk whatever
 * happens. A job found running at startup was cut off by a crash: it is rerun (both modes are safe
 * to repeat: in-place only discards free space, copy-and-replace renames atomically) or failed.
 */
import { randomUUID } from 'node:crypto';
import { statSync, openSync, closeSync, readdirSync, unlinkSync, chmodSync, chownSync, renameSync, fsyncSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { sparsifyCopy } from '../operations/copy.js';
import { sparsifyInPlace } from '../operations/in-place.js';
import { acquireImageLock, READ_LOCK } from '../io/image-lock.js';
import type { ServiceConfig } from './config.js';
import type { Store, JobRecord, JobOptions, JobStep, StepName, DiskRecord } from './store.js';
import type { Scanner } from './scanner.js';
import type { Bus } from './bus.js';
import { validateSparsify, type Refusal } from './validate.js';

class Cancelled extends Error {}

function newSteps(): JobStep[] {
  return (['validating', 'executing', 'finalizing'] as StepName[]).map((name) => ({ name, status: 'pending', startedAt: null, endedAt: null, done: 0, total: 0 }));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((res, rej) => {
    if (signal.aborted) return rej(new Cancelled());
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      res();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      rej(new Cancelled());
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Prefix of the temporary files a copy-and-replace job leaves beside the disk while it runs. */
function tempPrefix(diskPath: string, jobId: string): string {
  return `.${basename(diskPath)}.sparsify-job-${jobId}.tmp`;
}

function removeTemps(diskPath: string, jobId: string): void {
  const dir = dirname(diskPath);
  const prefix = tempPrefix(diskPath, jobId);
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (n.startsWith(prefix) || n.startsWith(`.${prefix}`)) {
      try {
        unlinkSync(join(dir, n));
      } catch {
        // gone already
      }
    }
  }
}

export class JobRunner {
  private readonly running = new Map<string, AbortController>();
  /** The in-memory record of each running job: fresher progress than the store's copy. */
  readonly active = new Map<string, JobRecord>();
  private readonly lastSaved = new Map<string, number>();
  private readonly lastPublished = new Map<string, number>();
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly scanner: Scanner,
    private readonly bus: Bus,
    private readonly config: ServiceConfig,
    private readonly log: (s: string) => void,
  ) {}

  derivedOf(d: DiskRecord): DiskRecord[] {
    return this.store.listDisks().filter((x) => x.backingId === d.id && x.id !== d.id);
  }

  /** Validate and, when the disk passes, lock it and queue the job. Synchronous on purpose. */
  submit(diskId: string, options: JobOptions, origin: JobRecord['origin']): { job: JobRecord } | { refusal: Refusal } {
    const d = this.store.getDisk(diskId);
    const refusal = validateSparsify(d, {
      heldForWriting: d ? this.scanner.inUse(d) : false,
      derived: d ? this.derivedOf(d) : [],
      canDiscard: d ? (this.scanner.domains[d.domain]?.canDiscard ?? false) : false,
      mode: options.mode,
    });
    if (refusal) return { refusal };
    const disk = d!;
    const job: JobRecord = {
      id: randomUUID(),
      diskId: disk.id,
      diskName: disk.name,
      options,
      status: 'pending',
      steps: newSteps(),
      origin,
      createdAt: Date.now(),
      startedAt: null,
      endedAt: null,
      attempts: 0,
      actualBefore: null,
      actualAfter: null,
      bytesReclaimed: null,
      error: null,
      warnings: [],
    };
    const ok = this.store.transaction(() => {
      if (!this.store.lockDisk(disk.id, job.id)) return false;
      this.store.putJob(job);
      return true;
    });
    if (!ok) return { refusal: { status: 409, code: 'disk-locked', detail: `${disk.name} is locked by another job` } };
    this.publishJob(job);
    this.bus.publish({ type: 'disk', data: { id: disk.id } });
    setImmediate(() => this.pump());
    return { job };
  }

  cancel(jobId: string): { job: JobRecord } | { refusal: Refusal } {
    const job = this.store.getJob(jobId);
    if (!job) return { refusal: { status: 404, code: 'job-not-found', detail: 'no such job' } };
    if (job.status === 'pending') {
      job.status = 'cancelled';
      job.endedAt = Date.now();
      job.error = 'cancelled before it started';
      for (const s of job.steps) if (s.status === 'pending') s.status = 'cancelled';
      this.store.transaction(() => {
        this.store.putJob(job);
        this.store.unlockDisk(job.diskId, job.id);
      });
      this.event('info', 'job-cancelled', job, `Sparsify of ${job.diskName} was cancelled before it started`);
      this.publishJob(job);
      this.bus.publish({ type: 'disk', data: { id: job.diskId } });
      return { job };
    }
    const ctl = this.running.get(jobId);
    if (job.status !== 'running' || !ctl) return { refusal: { status: 409, code: 'job-not-active', detail: `job is ${job.status}; only pending or running jobs can be cancelled` } };
    ctl.abort();
    return { job };
  }

  /** At startup: settle jobs a previous process left running, and locks no live job holds. */
  recover(): void {
    for (const job of this.store.listJobs({ status: ['running'] })) {
      const d = this.store.getDisk(job.diskId);
      if (d) {
        try {
          removeTemps(this.scanner.pathOf(d), job.id);
        } catch {
          // the disk is gone; the job fails below when it runs
        }
      }
      const rerun = this.config.onRestart === 'rerun' && job.attempts < this.config.maxAttempts;
      if (rerun) {
        job.status = 'pending';
        job.steps = newSteps();
        this.store.putJob(job);
        this.event('warning', 'job-restarted', job, `Sparsify of ${job.diskName} was interrupted by a service stop; running it again (safe to repeat)`);
      } else {
        this.finish(job, 'failed', 'interrupted by a service stop');
        this.event('error', 'job-failed', job, `Failed to sparsify ${job.diskName}: interrupted by a service stop`);
      }
    }
    const live = new Set(this.store.listJobs({ status: ['pending', 'running'] }).map((j) => j.id));
    for (const d of this.store.listDisks(true)) if (d.lockedBy && !live.has(d.lockedBy)) this.store.unlockDisk(d.id, d.lockedBy);
  }

  /** Start pending jobs, oldest first, up to the concurrency. */
  pump(): void {
    if (this.stopped) return;
    const pending = this.store.listJobs({ status: ['pending'] }).reverse();
    for (const job of pending) {
      if (this.running.size >= this.config.concurrency) return;
      if (this.running.has(job.id)) continue;
      const ctl = new AbortController();
      this.running.set(job.id, ctl);
      this.active.set(job.id, job);
      void this.run(job, ctl.signal).finally(() => {
        this.running.delete(job.id);
        this.active.delete(job.id);
        this.lastSaved.delete(job.id);
        this.lastPublished.delete(job.id);
        setImmediate(() => this.pump());
      });
    }
  }

  private step(job: JobRecord, name: StepName): JobStep {
    return job.steps.find((s) => s.name === name)!;
  }

  private begin(job: JobRecord, name: StepName): JobStep {
    const s = this.step(job, name);
    s.status = 'running';
    s.startedAt = Date.now();
    this.store.putJob(job);
    this.publishJob(job);
    return s;
  }

  private end(job: JobRecord, s: JobStep): void {
    s.status = 'finished';
    s.endedAt = Date.now();
    this.store.putJob(job);
    this.publishJob(job);
  }

  private async run(job: JobRecord, signal: AbortSignal): Promise<void> {
    job.status = 'running';
    job.startedAt = Date.now();
    job.attempts++;
    this.store.putJob(job);
    this.event('info', 'job-started', job, `Started to sparsify ${job.diskName}`);
    this.scanner.busy.add(job.diskId);
    try {
      // validating: the world may have changed since the request was accepted.
      let s = this.begin(job, 'validating');
      const d = this.store.getDisk(job.diskId);
      if (!d || !d.present) throw new Error('the disk is no longer in its storage domain');
      const path = this.scanner.pathOf(d);
      if (this.scanner.inUse(d)) throw new Error(`${d.name} is in use: another process (a running VM?) has it open for writing`);
      if (d.health !== 'ok' || !d.format) throw new Error(`${d.name} is illegal: ${d.error ?? 'unreadable'}`);
      if (this.config.testJobDelayMs) await sleep(this.config.testJobDelayMs, signal);
      this.end(job, s);

      s = this.begin(job, 'executing');
      job.actualBefore = statSync(path).blocks * 512;
      const events = {
        signal,
        onProgress: (p: { done: number; total: number }) => this.progress(job, s, p.done, p.total),
        onWarning: (w: string) => job.warnings.length < 100 && job.warnings.push(w),
        onStatus: (t: string) => {
          s.detail = t;
        },
      };
      if (job.options.mode === 'in-place') {
        await sparsifyInPlace({ path, format: d.format, ignore: job.options.ignore, zero: job.options.zero, ...events });
      } else {
        await this.copyAndReplace(job, d, path, events, signal);
      }
      if (s.total === 0) s.total = s.done = 1;
      s.done = s.total;
      this.end(job, s);

      s = this.begin(job, 'finalizing');
      job.actualAfter = statSync(path).blocks * 512;
      job.bytesReclaimed = Math.max(0, job.actualBefore - job.actualAfter);
      this.scanner.busy.delete(job.diskId);
      await this.scanner.refreshDisk(job.diskId);
      this.end(job, s);
      this.finish(job, 'finished', null);
      this.event('info', 'job-succeeded', job, `${job.diskName} sparsified successfully: ${fmtBytes(job.bytesReclaimed)} given back (actual size ${fmtBytes(job.actualBefore)} -> ${fmtBytes(job.actualAfter)})`);
    } catch (e) {
      const cancelled = signal.aborted || e instanceof Cancelled;
      if (cancelled && this.stopped) {
        // The service is stopping, not the user cancelling: run it again at the next start.
        job.status = 'pending';
        job.steps = newSteps();
        this.store.putJob(job);
        this.event('warning', 'job-restarted', job, `Sparsify of ${job.diskName} was stopped with the service; it runs again at the next start`);
        return;
      }
      const msg = cancelled ? 'cancelled at user request' : (e as Error).message;
      for (const st of job.steps) if (st.status === 'running') st.status = cancelled ? 'cancelled' : 'failed';
      for (const st of job.steps) if (st.status === 'pending') st.status = 'cancelled';
      this.finish(job, cancelled ? 'cancelled' : 'failed', msg);
      if (cancelled) this.event('info', 'job-cancelled', job, `Sparsify of ${job.diskName} was cancelled; the disk is unchanged`);
      else this.event('error', 'job-failed', job, `Failed to sparsify ${job.diskName}: ${msg}`);
    } finally {
      this.scanner.busy.delete(job.diskId);
      if (job.status !== 'pending') this.store.unlockDisk(job.diskId, job.id);
      if (!this.stopped) await this.scanner.refreshDisk(job.diskId).catch(() => undefined);
      this.bus.publish({ type: 'disk', data: { id: job.diskId } });
    }
  }

  /**
   * Copy mode over the same file: a sparse copy beside it, renamed over it. A read lock that
   * refuses writers is held on the original all along, so no VM can start writing to data we are
   * about to replace.
   */
  private async copyAndReplace(job: JobRecord, d: DiskRecord, path: string, events: object, signal: AbortSignal): Promise<void> {
    const guard = openSync(path, 'r');
    try {
      acquireImageLock(guard, path, READ_LOCK);
      const temp = join(dirname(path), tempPrefix(path, job.id));
      try {
        await sparsifyCopy({ input: path, output: temp, format: d.format!, convert: d.format!, ignore: job.options.ignore, zero: job.options.zero, ...events });
        if (signal.aborted) throw new Cancelled();
        const st = statSync(path);
        chmodSync(temp, st.mode & 0o7777);
        try {
          chownSync(temp, st.uid, st.gid);
        } catch {
          // not root: the copy keeps our ownership
        }
        renameSync(temp, path);
        const dfd = openSync(dirname(path), 'r');
        try {
          fsyncSync(dfd);
        } catch {
          // some filesystems cannot sync a folder; the rename is atomic anyway
        } finally {
          closeSync(dfd);
        }
      } finally {
        removeTemps(path, job.id);
      }
    } finally {
      closeSync(guard);
    }
  }

  private progress(job: JobRecord, s: JobStep, done: number, total: number): void {
    s.done = done;
    s.total = total;
    const now = Date.now();
    if (now - (this.lastPublished.get(job.id) ?? 0) >= 100 || done >= total) {
      this.lastPublished.set(job.id, now);
      this.bus.publish({ type: 'progress', data: { jobId: job.id, diskId: job.diskId, done, total } });
    }
    if (now - (this.lastSaved.get(job.id) ?? 0) >= 1000) {
      this.lastSaved.set(job.id, now);
      this.store.putJob(job);
    }
  }

  private finish(job: JobRecord, status: JobRecord['status'], error: string | null): void {
    job.status = status;
    job.error = error;
    job.endedAt = Date.now();
    this.store.transaction(() => {
      this.store.putJob(job);
      this.store.unlockDisk(job.diskId, job.id);
    });
    this.log(`job ${job.id} (${job.diskName}) ${status}${error ? `: ${error}` : ''}`);
    this.publishJob(job);
  }

  private event(severity: 'info' | 'warning' | 'error', type: 'job-started' | 'job-succeeded' | 'job-failed' | 'job-cancelled' | 'job-restarted', job: JobRecord, message: string): void {
    const ev = this.store.addEvent({ severity, type, diskId: job.diskId, jobId: job.id, message });
    this.bus.publish({ type: 'event', data: ev });
  }

  private publishJob(job: JobRecord): void {
    this.bus.publish({ type: 'job', data: job });
  }

  /** Stop taking jobs; running ones are aborted (they end cancelled, the disk consistent). */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const c of this.running.values()) c.abort();
    const t0 = Date.now();
    while (this.running.size && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
  }
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return i ? `${v.toFixed(1)} ${u[i]}` : `${v} B`;
}
