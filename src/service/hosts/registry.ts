/**
 * This process as a host of the cluster: registered under its name at start (refused while
 * another live process holds the name), a heartbeat every `hostTimeout / 6` seconds on the
 * database's clock, its domains' reachability checked at each beat, and marked stopped at exit.
 * It also knows how long its own link to the database has been steady: a host that was cut off
 * itself must not declare the others dead the moment it is back.
 */
import { randomUUID } from 'node:crypto';
import type { ServiceContext } from '../context.js';
import type { Mounts } from '../domains/mounts.js';
import { isUnavailable } from '../store/db.js';

export class HostNameInUseError extends Error {}

/** Does the API at `url` answer as this process instance (within 2 s)? */
async function answersAs(url: string | null, instance: string): Promise<boolean> {
  if (!url) return false;
  try {
    const r = await fetch(`${url}/api/info`, { signal: AbortSignal.timeout(2000) });
    const info = (await r.json()) as { instance?: string };
    return info.instance === instance;
  } catch {
    return false;
  }
}

export function heartbeatMs(hostTimeoutSeconds: number): number {
  return Math.max(1000, Math.floor((hostTimeoutSeconds * 1000) / 6));
}

export class HostRegistry {
  readonly instance = randomUUID();
  private timer: NodeJS.Timeout | undefined;
  private steadySince: number | null = null;
  private beating = false;
  private readonly onBeat: Array<() => Promise<void>> = [];
  private url: string | null = null;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly mounts: Mounts,
    private readonly version: string,
  ) {}

  /**
   * Register; throws HostNameInUseError when another live process is this host already. A fresh
   * heartbeat under our name is our own previous run when its address no longer answers as it
   * (it crashed a moment ago: the data folder's lock already told us no other process runs here).
   */
  async register(url: string | null = this.url): Promise<void> {
    this.url = url;
    const { config, store } = this.ctx;
    const holder = await store.hosts.get(this.ctx.host);
    const alive = holder && holder.instance !== this.instance && holder.status === 'up' ? await answersAs(holder.url, holder.instance) : false;
    const r = await store.hosts.register({ name: this.ctx.host, instance: this.instance, version: this.version, url, startedAt: Date.now(), concurrency: config.concurrency }, alive ? config.hostTimeoutSeconds * 1000 : 0);
    if (!r.ok) {
      throw new HostNameInUseError(`host name ${this.ctx.host} is in use by another running sparsify serve (last heartbeat ${Math.round(r.ageMs / 1000)} s ago, started ${new Date(r.holder.startedAt).toISOString()}${r.holder.url ? ` at ${r.holder.url}` : ''}); stop it, or give this one another --host-name`);
    }
    this.steadySince = Date.now();
    await this.ctx.record({ severity: 'info', type: 'host-up', diskId: null, jobId: null, message: `Host ${this.ctx.host} is up (sparsify ${this.version})` });
    this.ctx.bus.publish({ type: 'hosts' });
  }

  async setUrl(url: string): Promise<void> {
    this.url = url;
    await this.ctx.store.hosts.setUrl(this.ctx.host, this.instance, url);
    this.ctx.bus.publish({ type: 'hosts' });
  }

  /** Run `fn` after every heartbeat (the monitor's duties). */
  afterBeat(fn: () => Promise<void>): void {
    this.onBeat.push(fn);
  }

  start(): void {
    this.timer = setInterval(() => void this.beat(), heartbeatMs(this.ctx.config.hostTimeoutSeconds));
  }

  /** How long the database has answered every heartbeat, in ms (0 when it did not answer the last). */
  get steadyForMs(): number {
    return this.steadySince === null ? 0 : Date.now() - this.steadySince;
  }

  private async beat(): Promise<void> {
    if (this.beating) return;
    this.beating = true;
    try {
      await this.mounts.check();
      const ours = await this.ctx.store.hosts.heartbeat(this.ctx.host, this.instance);
      this.steadySince ??= Date.now();
      if (!ours) {
        // Retired while running, or marked non-responsive and re-registered elsewhere: take the name back if it is free.
        this.ctx.log.warn(`host ${this.ctx.host}: the cluster did not know this host any more; registering again`);
        await this.register().catch((e: Error) => this.ctx.log.error(e.message));
      }
      for (const fn of this.onBeat) await fn();
    } catch (e) {
      if (isUnavailable(e)) {
        if (this.steadySince !== null) this.ctx.log.warn(`heartbeat failed: ${(e as Error).message}`);
        this.steadySince = null;
      } else this.ctx.log.error(`heartbeat: ${(e as Error).message}`);
    } finally {
      this.beating = false;
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    try {
      await this.ctx.store.hosts.markStopped(this.ctx.host, this.instance);
      await this.ctx.record({ severity: 'info', type: 'host-stopped', diskId: null, jobId: null, message: `Host ${this.ctx.host} stopped` });
      this.ctx.bus.publish({ type: 'hosts' });
    } catch (e) {
      this.ctx.log.warn(`could not record that ${this.ctx.host} stopped: ${(e as Error).message}`);
    }
  }
}
