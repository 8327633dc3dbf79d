/**
 * The "needs sparsify" policy's settings and its schedule (the rule itself: needs-sparsify.ts).
 * When the schedule is on, the disks that need it are sparsified once per interval for the whole
 * cluster: every host ticks, and the one that claims the interval's slot in the store runs it.
 */
import type { ServiceContext } from './context.js';
import type { PolicyConfig } from './config.js';
import type { JobRecord } from './store/records.js';
import { isUnavailable } from './store/db.js';
import { needsSparsify } from './needs-sparsify.js';

const SLOT = 'policy-schedule-last-run';

export class Policy {
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly submit: (diskId: string) => Promise<{ job: JobRecord } | { refusal: unknown }>,
  ) {}

  async get(): Promise<PolicyConfig> {
    const saved = await this.ctx.store.settings.get('policy');
    return saved ? { ...this.ctx.config.policy, ...(JSON.parse(saved) as Partial<PolicyConfig>) } : { ...this.ctx.config.policy };
  }

  async set(p: Partial<PolicyConfig>): Promise<PolicyConfig> {
    const next = { ...(await this.get()), ...p };
    await this.ctx.store.settings.set('policy', JSON.stringify(next));
    return next;
  }

  /** Ticks often enough for the shortest interval; the store's slot makes it once per interval. */
  start(): void {
    this.timer = setInterval(() => void this.tick(), 1000);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      const p = await this.get();
      if (p.scheduleEnabled && (await this.ctx.store.settings.claimSlot(SLOT, p.scheduleIntervalSeconds * 1000))) await this.run(p);
    } catch (e) {
      if (!isUnavailable(e)) this.ctx.log.error(`policy schedule: ${(e as Error).message}`);
    } finally {
      this.ticking = false;
    }
  }

  /** Queue a job for every disk that needs sparsify and would be accepted; say so when any needed it. */
  async run(p?: PolicyConfig): Promise<JobRecord[]> {
    const policy = p ?? (await this.get());
    const queued: JobRecord[] = [];
    const candidates = (await this.ctx.store.diskPages.all({ needsSparsify: true }, { unreachable: [], vmBusy: [], thresholdBytes: policy.thresholdBytes, thresholdPercent: policy.thresholdPercent })).filter(
      (d) => !d.lockedBy && needsSparsify(d, policy),
    );
    for (const d of candidates) {
      const r = await this.submit(d.id);
      if ('job' in r) queued.push(r.job);
    }
    if (candidates.length) {
      await this.ctx.record({ severity: 'info', type: 'policy-run', diskId: null, jobId: null, message: `Scheduled sparsify on ${this.ctx.host}: ${candidates.length} disk(s) need it, ${queued.length} queued` });
    }
    return queued;
  }
}
