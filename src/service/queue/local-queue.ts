/**
 * The queue of a single host on SQLite: deliveries in memory, oldest first, rebuilt at start from
 * the jobs the store holds as pending. Nothing to share, so nothing more is needed.
 */
import type { Store } from '../store/store.js';
import type { Dispatch, JobQueue } from './types.js';

export class LocalQueue implements JobQueue {
  readonly kind = 'local';
  private readonly waiting: Array<{ jobId: string; domainId: string; notBefore: number }> = [];

  constructor(private readonly store: Store) {}

  async start(): Promise<void> {
    const pending = await this.store.jobs.list({ status: ['pending'], limit: 100_000 });
    for (const j of pending.reverse()) this.add(j.id, j.domainId, 0);
  }

  private add(jobId: string, domainId: string, notBefore: number): void {
    if (!this.waiting.some((w) => w.jobId === jobId)) this.waiting.push({ jobId, domainId, notBefore });
  }

  async send(job: { id: string; domainId: string }, _tx: Store, opts: { delaySeconds?: number } = {}): Promise<void> {
    this.add(job.id, job.domainId, Date.now() + (opts.delaySeconds ?? 0) * 1000);
  }

  async fetch(domainIds: readonly string[], n: number): Promise<Dispatch[]> {
    const out: Dispatch[] = [];
    const now = Date.now();
    for (let i = 0; i < this.waiting.length && out.length < n; ) {
      const w = this.waiting[i]!;
      if (domainIds.includes(w.domainId) && w.notBefore <= now) {
        this.waiting.splice(i, 1);
        out.push({ jobId: w.jobId, domainId: w.domainId, ack: async () => undefined, retry: async () => this.add(w.jobId, w.domainId, Date.now() + 2000) });
      } else i++;
    }
    return out;
  }

  async prepare(): Promise<void> {}

  async stop(): Promise<void> {}
}
