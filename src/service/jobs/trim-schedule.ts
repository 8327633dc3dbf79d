/**
 * The schedule's trim of running VMs (opt-in): once per schedule interval, each host trims its own
 * running VMs that are opted in (policy `trimVms`: VM UUIDs, or `trimDomains`: storage domains
 * whose disks' VMs are trimmed) and that have a disk over the "needs sparsify" threshold. Each host
 * runs its own slot (`policy-trim-last-run:HOST`), since only the VM's host reaches its agent.
 * With `trimOneAtATime` (the default), a host waits for one trim to end before it starts the next,
 * so no two guests of one host trim at the same moment.
 */
import type { ServiceContext } from '../context.js';
import type { PolicyConfig } from '../config.js';
import type { JobRecord } from '../store/records.js';
import type { Refusal } from './validate.js';
import { isUnavailable } from '../store/db.js';
import { needsSparsify } from '../needs-sparsify.js';
import { ENDED } from './lifecycle.js';
import { sleep } from './retry.js';
import { vmDiskPlaces } from '../vms/attachments.js';

const POLL_MS = 1000;

export class TrimSchedule {
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private stopped = false;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly policy: () => Promise<PolicyConfig>,
    private readonly trim: (vmId: string) => Promise<{ job: JobRecord } | { refusal: Refusal }>,
    /** How long one trim may take (the agent's bound), before the schedule stops waiting for it. */
    private readonly trimTimeoutSeconds: number,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), 1000);
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      const p = await this.policy();
      if (!p.scheduleEnabled || !(p.trimVms?.length || p.trimDomains?.length)) return;
      if (await this.ctx.store.settings.claimSlot(`policy-trim-last-run:${this.ctx.host}`, p.scheduleIntervalSeconds * 1000)) await this.run(p);
    } catch (e) {
      if (!isUnavailable(e)) this.ctx.log.error(`trim schedule: ${(e as Error).message}`);
    } finally {
      this.ticking = false;
    }
  }

  /** Trim this host's opted-in running VMs whose disks need it; returns the jobs started. */
  async run(p: PolicyConfig): Promise<JobRecord[]> {
    const { store, host } = this.ctx;
    const vms = await store.vms.list();
    const disks = await store.disks.atPlaces(vmDiskPlaces(vms.filter((v) => v.host === host && v.state === 'running')));
    const byPlace = new Map(disks.map((d) => [`${d.domainId}\u0000${d.rel}`, d]));
    const chosen = vms.filter((v) => {
      if (v.host !== host || v.state !== 'running') return false;
      const placed = v.disks.flatMap((d) => (d.domainId && d.rel ? [byPlace.get(`${d.domainId}\u0000${d.rel}`)] : [])).filter((d) => d !== undefined);
      const optedIn = p.trimVms?.includes(v.uuid) || v.disks.some((d) => d.domainId && p.trimDomains?.includes(d.domainId));
      return optedIn && placed.some((d) => !d.lockedBy && needsSparsify(d, p));
    });
    const started: JobRecord[] = [];
    const refused: string[] = [];
    for (const v of chosen) {
      if (this.stopped) break;
      const r = await this.trim(v.uuid);
      if ('refusal' in r) {
        refused.push(`${v.name}: ${r.refusal.code}`);
        continue;
      }
      started.push(r.job);
      if (p.trimOneAtATime !== false) await this.waitEnded(r.job.id);
    }
    if (chosen.length) {
      await this.ctx.record({ severity: refused.length ? 'warning' : 'info', type: 'policy-run', diskId: null, jobId: null, message: `Scheduled trim on ${host}: ${chosen.length} running VM(s) need it, ${started.length} trimmed${refused.length ? `; refused: ${refused.join(', ')}` : ''}` });
    }
    return started;
  }

  private async waitEnded(jobId: string): Promise<void> {
    const until = Date.now() + (this.trimTimeoutSeconds + 60) * 1000;
    while (!this.stopped && Date.now() < until) {
      const j = await this.ctx.store.jobs.get(jobId).catch(() => undefined);
      if (j && ENDED.includes(j.status)) return;
      await sleep(POLL_MS);
    }
  }
}
