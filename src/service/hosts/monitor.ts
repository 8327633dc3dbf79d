/**
 * The cluster's liveness duties, run by every host after its heartbeat (each is guarded so two
 * hosts doing it at once agree on one outcome):
 *   - a host silent for the host timeout becomes non-responsive;
 *   - the running jobs of hosts that are not up are taken over: run again (safe: in place only
 *     discards free space, a copy is renamed only by the current attempt) or ended;
 *   - a queued job that no up host can run for the orphan timeout fails, unlocking its disk.
 * A host only judges others after its own link to the database has been steady for the host
 * timeout: after an outage everyone's last heartbeat is old, and everyone gets to beat first.
 */
import type { ServiceContext } from '../context.js';
import type { JobQueue } from '../queue/types.js';
import type { HostRegistry } from './registry.js';
import * as lifecycle from '../jobs/lifecycle.js';

export class ClusterMonitor {
  constructor(
    private readonly ctx: ServiceContext,
    private readonly registry: HostRegistry,
    private readonly queue: JobQueue,
    /** Domains some up host reaches now. */
    private readonly reachableAnywhere: () => Promise<Set<string>>,
  ) {}

  /**
   * At start: jobs this host was running when it stopped (it died, or could not hand them back),
   * and those a release before the cluster left running (they name no host).
   */
  async recoverOwn(): Promise<void> {
    const { store, config, host } = this.ctx;
    const running = await store.jobs.list({ status: ['running'] });
    for (const job of running.filter((j) => j.host === host || j.host === null)) {
      const r = await lifecycle.takeOver(store, this.queue, job, { reason: `interrupted by a stop of ${host}`, rerun: config.onRestart === 'rerun', maxAttempts: config.maxAttempts, outcome: 'interrupted' });
      if (r) await this.announce(job, r, `was interrupted by a stop of ${host}`, 'job-restarted');
    }
    const released = await store.disks.releaseStaleLocks();
    if (released) this.ctx.log.warn(`released ${released} disk locks whose jobs had ended`);
  }

  async tick(): Promise<void> {
    const { store, config } = this.ctx;
    const timeoutMs = config.hostTimeoutSeconds * 1000;
    if (this.registry.steadyForMs < timeoutMs) return;
    for (const name of await store.hosts.sweep(timeoutMs)) {
      await this.ctx.record({ severity: 'error', type: 'host-non-responsive', diskId: null, jobId: null, message: `Host ${name} is non-responsive: no heartbeat for ${config.hostTimeoutSeconds} s; its jobs are taken over` });
      this.ctx.bus.publish({ type: 'hosts' });
    }
    for (const job of await store.jobs.runningOnHostsNotUp()) {
      const from = job.host ?? 'an unknown host';
      const r = await lifecycle.takeOver(store, this.queue, job, { reason: `${from} stopped responding`, rerun: true, maxAttempts: config.maxAttempts, outcome: 'taken-over' });
      if (r) await this.announce(job, r, `was running on ${from}, which stopped responding`);
    }
    if (config.orphanTimeoutSeconds > 0) await this.failOrphans();
  }

  private async announce(job: { id: string; diskId: string; diskName: string; domainId: string }, r: 'requeued' | 'failed' | 'cancelled', what: string, requeuedType: 'job-taken-over' | 'job-restarted' = 'job-taken-over'): Promise<void> {
    const message =
      r === 'requeued'
        ? `Sparsify of ${job.diskName} ${what}; it runs again (safe to repeat)`
        : r === 'cancelled'
          ? `Sparsify of ${job.diskName} ${what}; it had been cancelled, so it ends cancelled and the disk is unlocked`
          : `Sparsify of ${job.diskName} ${what}; it failed and the disk is unlocked`;
    await this.ctx.record({ severity: r === 'requeued' ? 'warning' : 'error', type: r === 'requeued' ? requeuedType : r === 'cancelled' ? 'job-cancelled' : 'job-failed', diskId: job.diskId, jobId: job.id, message });
    this.ctx.bus.publish({ type: 'job', id: job.id });
    this.ctx.bus.publish({ type: 'disk', id: job.diskId });
    if (r === 'requeued') this.ctx.bus.publish({ type: 'queued', domainId: job.domainId });
  }

  private async failOrphans(): Promise<void> {
    const { store, config } = this.ctx;
    const pending = await store.jobs.list({ status: ['pending'], limit: 100_000 });
    if (!pending.length) return;
    const reachable = await this.reachableAnywhere();
    const cutoff = Date.now() - config.orphanTimeoutSeconds * 1000;
    for (const job of pending) {
      if (reachable.has(job.domainId) || job.queuedAt > cutoff) continue;
      const why = `no host that is up has reached its storage domain for ${config.orphanTimeoutSeconds} s`;
      if (await lifecycle.cancelPending(store, job, why, 'failed')) {
        await this.ctx.record({ severity: 'error', type: 'job-failed', diskId: job.diskId, jobId: job.id, message: `Sparsify of ${job.diskName} failed: ${why}; the disk is unlocked` });
        this.ctx.bus.publish({ type: 'job', id: job.id });
        this.ctx.bus.publish({ type: 'disk', id: job.diskId });
      }
    }
  }
}
