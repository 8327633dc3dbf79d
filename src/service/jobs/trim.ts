/**
 * Trim jobs: a running VM gives space back without downtime. The guest trims its own filesystems
 * through its agent (guest-fstrim), QEMU turns the discards into holes in the images
 * (discard='unmap'), and the job measures each image's allocated bytes (st_blocks) before and
 * after. Nothing here writes an image: the guest does, through its own QEMU.
 *
 * The job has sparsify's shape (lifecycle.ts): created with its disks locked in one transaction
 * (every disk of the VM that lies in a storage domain: a sparsify of one of them, or a second trim
 * of the VM, finds it taken), claimed at once by this host (the VM's: its agent is reached through
 * this host's libvirt), every write fenced by the attempt, ended (and unlocked) in one transaction.
 * It is not queued: only the VM's host can run it. A trim cut short by a restart of this host is
 * failed (never rerun blindly: the VM may have moved); a trim is safe to ask again.
 */
import { statSync } from 'node:fs';
import type { ServiceContext } from '../context.js';
import type { Mounts } from '../domains/mounts.js';
import type { DiskRecord, JobRecord, JobStep, StepName, TrimResult } from '../store/records.js';
import type { VmRecord } from '../store/vms.js';
import { AgentError, guestFstrim, liveDisks, liveState, pingAgent, type LiveDisk } from '../vms/agent.js';
import { agentRefusal, diskRefusal, trimmable, vmRefusal } from '../vms/trim-checks.js';
import { fenceOf, fencedWrite, FencedOut, type Fence } from './fence.js';
import * as lifecycle from './lifecycle.js';
import { storageCanRelease, type Refusal } from './validate.js';
import type { JobOrRefusal } from './requests.js';
import { sleep } from './retry.js';

export interface TrimDeps {
  ctx: ServiceContext;
  mounts: Mounts;
  /** This host's libvirt connection; undefined when it reads none. */
  uri: string | undefined;
  /** Read this host's libvirt now (the VM's state before the checks). */
  refreshVms(): Promise<void>;
  /** Re-probe a disk (its size after the trim). */
  refreshDisk(id: string): Promise<unknown>;
  pingTimeoutS: number;
  fstrimTimeoutS: number;
}

/** How often the job looks at the VM's state while the guest trims. */
const WATCH_MS = 1000;

class TrimRefused extends Error {
  constructor(readonly refusal: Refusal) {
    super(refusal.detail);
  }
}

interface Checked {
  vm: VmRecord;
  live: LiveDisk[];
  /** The VM's disks that are disks of a storage domain, by their source path. */
  managed: Map<string, DiskRecord>;
}

/** Every precondition (trim-checks.ts), asked of the inventory, the live XML and the agent. */
export async function checkTrim(deps: TrimDeps, vmId: string): Promise<Checked | { refusal: Refusal }> {
  const { store, host } = deps.ctx;
  await deps.refreshVms();
  const all = (await store.vms.list()).filter((v) => v.uuid === vmId.toLowerCase());
  const vm = all.find((v) => v.host === host) ?? all.find((v) => v.state !== 'shut-off') ?? all[0];
  const early = vmRefusal(vm, host);
  if (early || !deps.uri) return { refusal: early ?? { status: 409, code: 'vm-on-other-host', detail: `${host} reads no libvirt` } };
  let live: LiveDisk[];
  try {
    live = await liveDisks(deps.uri, vm!.uuid);
  } catch (e) {
    return { refusal: { status: 409, code: 'vm-not-running', detail: `${vm!.name}'s live XML could not be read: ${(e as Error).message}` } };
  }
  const managed = new Map<string, DiskRecord>();
  for (const d of vm!.disks) {
    if (!d.source || !d.domainId || !d.rel) continue;
    const rec = await store.disks.findAt(d.domainId, d.rel);
    if (rec && rec.present) managed.set(d.source, rec);
  }
  const refusal = diskRefusal(vm!.name, live, managed, (d) => storageCanRelease(d, deps.mounts.get(d.domainId)?.canDiscard ?? false));
  if (refusal) return { refusal };
  try {
    await pingAgent(deps.uri, vm!.uuid, deps.pingTimeoutS);
  } catch (e) {
    return { refusal: agentRefusal(vm!.name, (e as Error).message) };
  }
  return { vm: vm!, live, managed };
}

/** Allocated bytes of an image file (st_blocks); null for a block device (only the device knows). */
function allocated(path: string): number | null {
  try {
    const st = statSync(path);
    return st.isBlockDevice() ? null : st.blocks * 512;
  } catch {
    return null;
  }
}

export class TrimRunner {
  private readonly running = new Map<string, { job: JobRecord; ctl: AbortController; done: Promise<void> }>();
  private readonly unsubscribe: () => void;

  constructor(private readonly deps: TrimDeps) {
    this.unsubscribe = deps.ctx.bus.subscribe((m) => {
      if (m.type === 'cancel') this.running.get(m.jobId)?.ctl.abort(new Error('cancelled at user request'));
    });
  }

  active(id: string): JobRecord | undefined {
    return this.running.get(id)?.job;
  }

  /** POST /api/vms/{id}/trim: check, lock the VM's disks and create the job, claim it here and start it. */
  async submit(vmId: string, origin: JobRecord['origin']): Promise<JobOrRefusal> {
    const { ctx } = this.deps;
    const checked = await checkTrim(this.deps, vmId);
    if ('refusal' in checked) return checked;
    const { vm, managed } = checked;
    const disks = [...managed.values()];
    const first = disks[0]!;
    const job = lifecycle.newJob(first, { mode: 'trim', ignore: [], zero: [], trim: { vmId: vm.uuid, vmName: vm.name, vmHost: vm.host, diskIds: disks.map((d) => d.id) } }, origin);
    job.diskName = vm.name;
    try {
      await ctx.store.transaction(async (tx) => {
        for (const d of disks) {
          if (!(await tx.disks.lock(d.id, job.id))) {
            const holder = (await tx.disks.get(d.id))?.lockedBy;
            throw new TrimRefused({ status: 409, code: 'disk-locked', detail: `${d.name} (disk of ${vm.name}) is locked by job ${holder ?? 'another job'}: a sparsify of a disk and a trim of its VM exclude each other` });
          }
        }
        await tx.jobs.insert(job);
      });
    } catch (e) {
      if (e instanceof TrimRefused) return { refusal: e.refusal };
      throw e;
    }
    for (const d of disks) ctx.bus.publish({ type: 'disk', id: d.id });
    const claimed = await lifecycle.claim(ctx.store, job.id, ctx.host);
    if (!claimed) return { job };
    const entry = { job: claimed, ctl: new AbortController(), done: Promise.resolve() };
    this.running.set(job.id, entry);
    entry.done = this.run(claimed, fenceOf(claimed), checked, entry.ctl.signal).finally(() => this.running.delete(job.id));
    ctx.bus.publish({ type: 'job', id: job.id });
    return { job: claimed };
  }

  private async save(job: JobRecord, fence: Fence): Promise<void> {
    const r = await fencedWrite(this.deps.ctx.store, job, fence);
    if (r.cancelRequested) throw new Error('cancelled at user request');
    this.deps.ctx.bus.publish({ type: 'job', id: job.id });
  }

  private async step(job: JobRecord, fence: Fence, done: JobStep | undefined, name: StepName): Promise<JobStep> {
    const now = Date.now();
    if (done) {
      done.status = 'finished';
      done.endedAt = now;
    }
    const s = job.steps.find((x) => x.name === name)!;
    s.status = 'running';
    s.startedAt = now;
    await this.save(job, fence);
    return s;
  }

  /** Resolves when the VM stops running (shut off, paused, migrating); polled while the guest trims. */
  private watchVm(uuid: string, signal: AbortSignal): Promise<never> {
    return new Promise((_, reject) => {
      const timer = setInterval(() => {
        void liveState(this.deps.uri!, uuid)
          .then((st) => {
            if (st.state !== 'running' || (st.reason && /migrat/i.test(st.reason))) {
              clearInterval(timer);
              reject(new Error(`the VM became ${st.state}${st.reason ? ` (${st.reason})` : ''} during the trim; the job ends here and its disks are free again`));
            }
          })
          .catch(() => undefined);
      }, WATCH_MS);
      signal.addEventListener('abort', () => {
        clearInterval(timer);
        reject(signal.reason instanceof Error ? signal.reason : new Error('stopped'));
      });
    });
  }

  private async run(job: JobRecord, fence: Fence, checked: Checked, signal: AbortSignal): Promise<void> {
    const { ctx, uri } = this.deps;
    const { vm, live } = checked;
    const log = ctx.log.child({ jobId: job.id, vm: vm.name });
    const stop = new AbortController();
    const abort = () => stop.abort(signal.reason);
    signal.addEventListener('abort', abort);
    await ctx.record({ severity: 'info', type: 'job-started', diskId: job.diskId, jobId: job.id, message: `Started to trim VM ${vm.name} on ${ctx.host} (through its guest agent)` }).catch(() => undefined);
    try {
      let s = await this.step(job, fence, undefined, 'validating');
      // The VM may have changed since the request: its state, its XML, its agent.
      const st = await liveState(uri!, vm.uuid);
      if (st.state !== 'running') throw new Error(`${vm.name} is ${st.state} now; only a running guest can trim itself`);
      // Tests: a moment to act on the VM (suspend it) between the checks and the guest's trim.
      if (ctx.config.testJobDelayMs) await sleep(ctx.config.testJobDelayMs, stop.signal);
      s = await this.step(job, fence, s, 'executing');
      s.detail = 'the guest is trimming its filesystems';
      const images = live.filter(trimmable).map((d) => ({ target: d.target, source: d.source ?? '', diskId: (d.source && checked.managed.get(d.source)?.id) ?? null, allocatedBefore: d.source ? allocated(d.source) : null, allocatedAfter: null as number | null, givenBack: null as number | null }));
      job.actualBefore = sum(images.map((i) => i.allocatedBefore));
      const t0 = Date.now();
      const guest = await Promise.race([guestFstrim(uri!, vm.uuid, this.deps.fstrimTimeoutS), this.watchVm(vm.uuid, stop.signal)]).catch(async (e: Error) => {
        // libvirt refuses an agent command to a VM that is not running: say what became of the VM.
        const now = await liveState(uri!, vm.uuid).catch(() => undefined);
        if (e instanceof AgentError && now && now.state !== 'running') throw new Error(`the VM became ${now.state}${now.reason ? ` (${now.reason})` : ''} during the trim (${e.message}); the job ends here and its disks are free again`);
        if (e instanceof AgentError && e.code === 'agent-timeout') throw new Error(`the guest agent of ${vm.name} did not finish the trim within ${this.deps.fstrimTimeoutS} s (${e.message}); the guest keeps running and its disks are free again`);
        throw e;
      });
      const seconds = (Date.now() - t0) / 1000;
      s.done = s.total = 1;
      s = await this.step(job, fence, s, 'finalizing');
      for (const i of images) {
        i.allocatedAfter = i.source ? allocated(i.source) : null;
        i.givenBack = i.allocatedBefore === null || i.allocatedAfter === null ? null : i.allocatedBefore - i.allocatedAfter;
      }
      const result: TrimResult = { images, givenBack: sum(images.map((i) => i.givenBack)), guest, seconds };
      job.trimResult = result;
      job.actualAfter = sum(images.map((i) => i.allocatedAfter));
      job.bytesReclaimed = result.givenBack === null ? null : Math.max(0, result.givenBack);
      for (const g of guest) if (g.error && job.warnings.length < 100) job.warnings.push(`${g.path}: ${g.error}`);
      for (const id of lifecycle.lockedDisks(job)) await this.deps.refreshDisk(id).catch(() => undefined);
      s.status = 'finished';
      s.endedAt = Date.now();
      await lifecycle.end(ctx.store, job, fence, 'finished', null);
      log.info('trim finished', { result });
      await ctx.record({ severity: 'info', type: 'job-succeeded', diskId: job.diskId, jobId: job.id, message: `Trimmed VM ${vm.name}: ${describe(result)}` }).catch(() => undefined);
    } catch (err) {
      if (err instanceof FencedOut) {
        log.warn(err.message);
        return;
      }
      const cancelled = /cancelled at user request/.test((err as Error).message);
      const msg = (err as Error).message;
      try {
        await lifecycle.end(ctx.store, job, fence, cancelled ? 'cancelled' : 'failed', msg);
      } catch (e2) {
        log.error(`the trim's end could not be recorded: ${(e2 as Error).message}`);
      }
      log.info(`trim ${cancelled ? 'cancelled' : 'failed'}: ${msg}`);
      await ctx.record({ severity: cancelled ? 'info' : 'error', type: cancelled ? 'job-cancelled' : 'job-failed', diskId: job.diskId, jobId: job.id, message: `Failed to trim VM ${vm.name}: ${msg}` }).catch(() => undefined);
    } finally {
      stop.abort(new Error('done'));
      signal.removeEventListener('abort', abort);
      ctx.bus.publish({ type: 'job', id: job.id });
      for (const id of lifecycle.lockedDisks(job)) ctx.bus.publish({ type: 'disk', id });
    }
  }

  /** This host stops: each trim ends as failed (the guest may still finish it; asking again is safe). */
  async stop(timeoutMs: number): Promise<void> {
    this.unsubscribe();
    const all = [...this.running.values()];
    for (const r of all) r.ctl.abort(new Error(`${this.deps.ctx.host} stopped during the trim; ask again once it is back`));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(all.map((r) => r.done)), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }
}

function sum(xs: Array<number | null>): number | null {
  const known = xs.filter((x): x is number => x !== null);
  return known.length ? known.reduce((a, b) => a + b, 0) : null;
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

function describe(r: TrimResult): string {
  const guest = r.guest.filter((g) => g.trimmed !== null).map((g) => `${g.path} ${mib(g.trimmed!)}`).join(', ');
  return `${r.givenBack === null ? 'the images could not be measured' : `${mib(Math.max(0, r.givenBack))} given back to the host`}; the guest trimmed ${guest || 'nothing it reported'} in ${r.seconds.toFixed(1)} s`;
}
