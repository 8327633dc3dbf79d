/**
 * The service on one host, put together: the store (SQLite, or the cluster's PostgreSQL), the bus,
 * this host's domains and their scanner, the queue and the worker that runs the jobs it hands
 * over, the host registry and the cluster monitor, and the policy. The HTTP layer (api/) only
 * translates between this and requests.
 */
import { readFileSync, writeFileSync, existsSync, chmodSync, mkdirSync } from 'node:fs';
import { loadKeysFile } from '../index.js';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ServiceConfig, PolicyConfig } from './config.js';
import { DEFAULT_COMPACTION, COMPACTION_TEXT, type Allocation, type CompactionSetting, type JobOptions, type JobRecord, type EventRecord, type HostRecord, type SparsifyMode } from './store/records.js';
import { Store, openStore, describeStore } from './store/store.js';
import { PgNotifier } from './store/pg-notify.js';
import { Bus } from './bus.js';
import { eventRecorder, type ServiceContext } from './context.js';
import type { Logger } from './logging.js';
import { Mounts } from './domains/mounts.js';
import { Scanner } from './domains/scanner.js';
import type { JobQueue } from './queue/types.js';
import { LocalQueue } from './queue/local-queue.js';
import { PgBossQueue } from './queue/pg-queue.js';
import { Dispatcher } from './queue/dispatcher.js';
import { JobWorker } from './jobs/worker.js';
import * as requests from './jobs/requests.js';
import { defaultModeOf, storageCanRelease, type Refusal } from './jobs/validate.js';
import { HostRegistry } from './hosts/registry.js';
import { DataDirLock } from './hosts/data-dir-lock.js';
import { ClusterMonitor } from './hosts/monitor.js';
import { Policy } from './policy.js';
import { DiskCatalog } from './catalog.js';
import { DiskList } from './disk-list.js';
import { EnginePool } from './engine/pool.js';
import { ClusterState } from './cluster-state.js';
import { Metrics } from './metrics.js';
import { diskView, domainViews, hostViews, jobView, type DiskView, type DomainView, type JobView, type HostView } from './views.js';
import { VERSION } from './version.js';
import { checkPrivateFile } from './config-files.js';
import { VmInventory } from './vms/inventory.js';
import { TrimRunner } from './jobs/trim.js';
import { TrimSchedule } from './jobs/trim-schedule.js';
import { PING_TIMEOUT_S, DEFAULT_FSTRIM_TIMEOUT_S } from './vms/agent.js';
import { VmAttachments, vmsOf, type VmRef } from './vms/attachments.js';
import { vmViews, type VmListView } from './vms/views.js';
import { vmDiskPlaces } from './vms/attachments.js';
import { historySeries, type HistoryView } from './history/series.js';

/** A sparsify request waits this long at most for this host's libvirt to be read again. */
const VM_REFRESH_WAIT_MS = 5000;
/** The schedule submits many disks at once: a read this recent will do for it (a person's request always reads again). */
const VM_READ_MAX_AGE_SCHEDULE_MS = 10_000;

/**
 * The LUKS keys file: the configured one (it must exist), or DATA_DIR/luks-keys when present. It
 * must be a regular file of mode 0600 and parse, or the service does not start.
 */
async function checkKeysFile(config: ServiceConfig): Promise<string | undefined> {
  const path = config.keysFile ?? join(config.dataDir, 'luks-keys');
  if (!config.keysFile && !existsSync(path)) return undefined;
  const keys = await loadKeysFile(path);
  keys.dispose();
  return path;
}

export class Service {
  readonly ctx: ServiceContext;
  readonly mounts: Mounts;
  readonly scanner: Scanner;
  readonly queue: JobQueue;
  readonly worker: JobWorker;
  readonly dispatcher: Dispatcher;
  readonly registry: HostRegistry;
  readonly monitor: ClusterMonitor;
  readonly policy: Policy;
  readonly catalog: DiskCatalog;
  /** The disk list by pages, streams and totals, read from the database. */
  readonly diskList: DiskList;
  readonly engine: EnginePool;
  readonly cluster: ClusterState;
  /** This host's VMs (its libvirt), and every host's as the disks see them. */
  readonly vmInventory: VmInventory;
  readonly vms: VmAttachments;
  /** Trim jobs of this host's running VMs, through their guest agents. */
  readonly trims: TrimRunner;
  /** The schedule's opt-in trim of this host's running VMs. */
  readonly trimSchedule: TrimSchedule;
  readonly token: string;
  readonly tokenGenerated: boolean;
  private timers: NodeJS.Timeout[] = [];
  private started = false;

  private constructor(
    readonly config: ServiceConfig,
    readonly store: Store,
    readonly bus: Bus,
    readonly log: Logger,
    private readonly dataDirLock: DataDirLock,
    /** The LUKS keys file in use, checked at start. */
    readonly keysFile: string | undefined,
  ) {
    this.ctx = { store, bus, config, host: config.hostName, log, metrics: new Metrics(store, () => this.diskList.summary()), record: eventRecorder(store, bus, config.hostName, log) };
    const t = this.loadToken();
    this.token = t.token;
    this.tokenGenerated = t.generated;
    this.mounts = new Mounts(this.ctx, config.domains);
    // One thread per job slot, and one for the scanner's analyses.
    this.engine = new EnginePool(config.concurrency + 1, keysFile, (e) => log.error(`an engine thread failed: ${e.message}`));
    this.scanner = new Scanner(this.ctx, this.mounts, (id) => this.isScannerOf(id), this.engine);
    this.queue = store.kind === 'postgres' ? new PgBossQueue(store, (e) => log.warn(`job queue: ${e.message}`)) : new LocalQueue(store);
    this.worker = new JobWorker(this.ctx, this.mounts, this.scanner, this.queue, this.engine);
    this.dispatcher = new Dispatcher(this.queue, config.concurrency, () => this.mounts.reachableIds(), (d) => this.worker.runDispatch(d), bus, log);
    this.policy = new Policy(this.ctx, (diskId) => this.submit(diskId, {}, 'schedule'));
    this.cluster = new ClusterState(store, bus, () => this.policy.get());
    this.registry = new HostRegistry(this.ctx, this.mounts, VERSION);
    this.monitor = new ClusterMonitor(this.ctx, this.registry, this.queue, async () => new Set([...(await this.cluster.domainStates()).values()].filter((d) => d.reachable).map((d) => d.id)));
    this.vmInventory = new VmInventory(this.ctx, this.mounts, config.libvirt, config.libvirtIntervalSeconds, (id) => this.scanner.refreshDisk(id));
    this.vms = new VmAttachments(store, bus);
    this.trims = new TrimRunner({
      ctx: this.ctx,
      mounts: this.mounts,
      uri: config.libvirt,
      refreshVms: () => this.vmInventory.refresh(),
      refreshDisk: (id) => this.scanner.refreshDisk(id),
      pingTimeoutS: config.agentPingTimeoutSeconds ?? PING_TIMEOUT_S,
      fstrimTimeoutS: config.agentTrimTimeoutSeconds ?? DEFAULT_FSTRIM_TIMEOUT_S,
    });
    this.trimSchedule = new TrimSchedule(this.ctx, () => this.policy.get(), (vmId) => this.trims.submit(vmId, 'schedule'), config.agentTrimTimeoutSeconds ?? DEFAULT_FSTRIM_TIMEOUT_S);
    const listContext = async () => ({ policy: await this.cluster.policy(), domains: await this.cluster.domainStates(), defaultMode: config.defaultMode, vms: await this.vms.index() });
    this.catalog = new DiskCatalog(store, bus, listContext);
    this.diskList = new DiskList(store, bus, listContext);
  }

  /** Open the store (migrating it) and the link to other hosts. Throws DbFatalError when the database cannot be used. */
  static async open(config: ServiceConfig, log: Logger): Promise<Service> {
    mkdirSync(config.dataDir, { recursive: true });
    const keysFile = await checkKeysFile(config);
    // Whoever can read the token can change every disk: it stays its owner's alone, as the keys file does.
    const tokenFile = join(config.dataDir, 'token');
    if (!config.token && existsSync(tokenFile)) checkPrivateFile(tokenFile, 'token file');
    const lock = DataDirLock.acquire(config.dataDir);
    let opened: Awaited<ReturnType<typeof openStore>>;
    try {
      opened = await openStore({ databaseUrl: config.database, dataDir: config.dataDir, hostName: config.hostName, log: (s) => log.warn(s) });
    } catch (e) {
      lock.release();
      throw e;
    }
    const { store, migrated } = opened;
    if (migrated.from !== migrated.to) log.info(`${describeStore({ databaseUrl: config.database, dataDir: config.dataDir })}: schema upgraded from version ${migrated.from} to ${migrated.to}`);
    const transport = config.database ? new PgNotifier(config.database, store.db, (s) => log.warn(s)) : undefined;
    const bus = new Bus(`${config.hostName}:${randomBytes(6).toString('hex')}`, transport, (s) => log.warn(s));
    try {
      await bus.start();
    } catch (e) {
      await store.close();
      lock.release();
      throw e;
    }
    if (keysFile) log.info(`LUKS keys from ${keysFile}: volumes whose UUID has a key are sparsified inside`);
    return new Service(config, store, bus, log, lock, keysFile);
  }

  get version(): string {
    return VERSION;
  }

  /** The configured token, or the one kept in the data folder, or a new one written there (0600). */
  private loadToken(): { token: string; generated: boolean } {
    if (this.config.token) return { token: this.config.token, generated: false };
    const file = join(this.config.dataDir, 'token');
    if (existsSync(file)) {
      const t = readFileSync(file, 'utf8').trim();
      if (t.length >= 8) return { token: t, generated: false };
    }
    const token = randomBytes(24).toString('base64url');
    writeFileSync(file, token + '\n', { mode: 0o600 });
    chmodSync(file, 0o600);
    return { token, generated: true };
  }

  /** The first up host, by name, that reaches the domain scans it. */
  private async isScannerOf(domainId: string): Promise<boolean> {
    if (this.store.kind === 'sqlite') return true;
    const s = await this.cluster.domain(domainId);
    const first = s?.hosts.sort()[0];
    return first === undefined || first === this.ctx.host;
  }

  /**
   * Join the cluster: attach the domains, register this host, settle what a previous run of it
   * left, then take jobs and scan in the background (the API answers meanwhile).
   */
  async start(): Promise<void> {
    await this.engine.ready();
    await this.mounts.attach();
    await this.registry.register(null);
    this.started = true;
    await this.queue.start();
    await this.queue.prepare(this.mounts.list().map((m) => m.id));
    await this.monitor.recoverOwn();
    this.worker.start();
    this.dispatcher.start();
    this.registry.afterBeat(() => this.monitor.tick());
    this.registry.start();
    this.policy.start();
    this.trimSchedule.start();
    await this.vmInventory.start();
    this.bus.subscribe((m) => {
      if (m.type === 'rescan') this.rescan();
      if (m.type === 'vms-refresh') void this.vmInventory.refresh();
    });
    this.rescan();
    if (this.config.scanIntervalSeconds > 0) this.timers.push(setInterval(() => this.rescan(), this.config.scanIntervalSeconds * 1000));
  }

  /** The address the API listens on, for the hosts view. */
  async announce(url: string): Promise<void> {
    await this.registry.setUrl(url);
  }

  rescan(): void {
    void this.scanner.scanAll().catch((e: Error) => this.log.warn(`scan failed: ${e.message}`));
  }

  /**
   * Leave: stop taking jobs, hand running ones back within `timeoutMs` (they run again on another
   * host or after the restart), say this host stopped, close.
   */
  async stop(timeoutMs = 10_000): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.policy.stop();
    this.trimSchedule.stop();
    this.vmInventory.stop();
    this.vms.close();
    this.dispatcher.stop();
    this.scanner.close();
    this.catalog.close();
    this.diskList.close();
    this.cluster.close();
    if (this.started) {
      await Promise.all([this.worker.stop(timeoutMs), this.trims.stop(timeoutMs)]);
      await this.registry.stop();
    }
    await this.queue.stop().catch(() => undefined);
    await this.engine.close().catch(() => undefined);
    await this.bus.close().catch(() => undefined);
    await this.store.close().catch(() => undefined);
    this.dataDirLock.release();
  }

  // ---- disks

  async getDiskView(id: string): Promise<(DiskView & { map: unknown; layers: unknown }) | undefined> {
    const d = await this.store.disks.get(id);
    if (!d || !d.present) return undefined;
    const [policy, domains, derived, map, vms] = await Promise.all([this.cluster.policy(), this.cluster.domainStates(), this.store.disks.derivedOf(id), this.store.disks.map(id), this.vms.index()]);
    const view = diskView(d, { policy, domains, derived: new Map([[id, derived]]), defaultMode: this.config.defaultMode, vms });
    return { ...view, map: map?.root ?? null, layers: map?.layers ?? null };
  }

  async setAllocation(id: string, allocation: Allocation | 'auto'): Promise<DiskView | undefined> {
    const d = await this.store.disks.get(id);
    if (!d || !d.present) return undefined;
    d.allocationOverride = allocation === 'auto' ? null : allocation;
    await this.store.disks.put(d);
    this.bus.publish({ type: 'disk', id });
    return this.getDiskView(id);
  }

  // ---- jobs

  /** POST /disks/{id}/sparsify. */
  async submit(diskId: string, opts: Partial<Omit<JobOptions, 'mode' | 'trim'>> & { mode?: SparsifyMode }, origin: JobRecord['origin'] = 'api'): Promise<{ job: JobView } | { refusal: Refusal }> {
    // A request naming no mode gets the configured one, but a block device is only ever sparsified in place.
    const mode = opts.mode ?? defaultModeOf(await this.store.disks.get(diskId), this.config.defaultMode);
    const options: JobOptions & { mode: SparsifyMode } = { mode, ignore: opts.ignore ?? [], zero: opts.zero ?? [] };
    const r = await requests.submit(
      {
        ctx: this.ctx,
        mounts: this.mounts,
        scanner: this.scanner,
        queue: this.queue,
        domainState: async (id) => (await this.cluster.domain(id)) ?? { reachable: false, canDiscard: false, compaction: DEFAULT_COMPACTION },
        vmsOf: (d) => this.freshVmsOf(d, origin === 'schedule' ? VM_READ_MAX_AGE_SCHEDULE_MS : 0),
      },
      diskId,
      options,
      origin,
    );
    return 'job' in r ? { job: jobView(r.job) } : r;
  }

  /** The VMs that use a disk, after reading this host's libvirt again (bounded: a slow libvirtd leaves the last read). */
  private async freshVmsOf(d: { domainId: string; rel: string }, maxAgeMs: number): Promise<VmRef[]> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.vmInventory.refreshIfOlder(maxAgeMs), new Promise((r) => (timer = setTimeout(r, VM_REFRESH_WAIT_MS)))]);
    clearTimeout(timer);
    return vmsOf(await this.vms.index(), d);
  }

  /** POST /vms/{id}/trim: the guest trims its filesystems through its agent; the job measures what the host got back. */
  async trimVm(vmId: string, origin: JobRecord['origin'] = 'api'): Promise<{ job: JobView } | { refusal: Refusal }> {
    const r = await this.trims.submit(vmId, origin);
    return 'job' in r ? { job: jobView(this.trims.active(r.job.id) ?? r.job) } : r;
  }

  // ---- history

  /** Finished jobs since `since` as chart series (space given back, each domain's actual size). */
  async history(since: number): Promise<HistoryView> {
    const [jobs, summary, domains] = await Promise.all([this.store.jobs.list({ status: ['finished'], limit: 10_000 }), this.diskList.summary(), this.store.hosts.domains()]);
    // Each domain's actual size now, from the totals (not every disk's record).
    const sizes = summary.byDomain.map((d) => ({ present: true, domainId: d.domainId, actualSize: d.actualBytes }));
    return historySeries(jobs, sizes, domains, since);
  }

  // ---- virtual machines

  /** The host that runs this VM (not this one), when another host's libvirt says it runs there. */
  async hostOfRunningVm(vmId: string): Promise<HostRecord | undefined> {
    const vm = (await this.store.vms.list()).find((v) => v.uuid === vmId && v.host !== this.ctx.host && v.state !== 'shut-off');
    return vm ? this.store.hosts.get(vm.host) : undefined;
  }

  /** How long a request passed on to another host may take: its agent's ping bound, and room for its checks. */
  get forwardTimeoutMs(): number {
    return ((this.config.agentPingTimeoutSeconds ?? PING_TIMEOUT_S) + 30) * 1000;
  }

  async listVms(): Promise<VmListView> {
    const [vms, inventories] = await Promise.all([this.store.vms.list(), this.store.vms.inventories()]);
    const disks = await this.store.disks.atPlaces(vmDiskPlaces(vms));
    return vmViews(vms, inventories, disks, { host: this.ctx.host, liveOf: (u) => this.vmInventory.liveOf(u), canPunch: (d) => storageCanRelease(d, this.mounts.get(d.domainId)?.canDiscard ?? false) });
  }

  /** Read this host's libvirt now, and ask every other host to (on the bus). */
  async refreshVms(): Promise<void> {
    // Heard here too, at once: this host's read starts with the publish.
    this.bus.publish({ type: 'vms-refresh' });
    await this.vmInventory.settled();
  }

  async cancel(jobId: string): Promise<{ job: JobView } | { refusal: Refusal }> {
    const r = await requests.cancel(this.ctx, jobId);
    return 'job' in r ? { job: jobView((await this.getJob(jobId)) ?? r.job) } : r;
  }

  /** A job, with this host's fresher progress when it runs here. */
  async getJob(id: string): Promise<JobRecord | undefined> {
    return this.worker.active(id) ?? this.trims.active(id) ?? (await this.store.jobs.get(id));
  }

  async listJobs(opts: { status?: JobRecord['status'][]; diskId?: string; limit?: number }): Promise<JobView[]> {
    return (await this.store.jobs.list(opts)).map((j) => jobView(this.worker.active(j.id) ?? this.trims.active(j.id) ?? j));
  }

  jobView(j: JobRecord): JobView {
    return jobView(this.worker.active(j.id) ?? this.trims.active(j.id) ?? j);
  }

  // ---- storage domains

  async listDomains(): Promise<DomainView[]> {
    const [domains, mounts, hosts] = await Promise.all([this.store.hosts.domains(), this.store.hosts.mounts(), this.store.hosts.list()]);
    return domainViews(domains, mounts, hosts);
  }

  async getDomain(id: string): Promise<DomainView | undefined> {
    return (await this.listDomains()).find((d) => d.id === id);
  }

  /** Change when in-place sparsify compacts the domain's images, for every host (each reads it when it runs a job). */
  async setCompaction(id: string, compaction: CompactionSetting): Promise<DomainView | undefined> {
    const d = await this.store.hosts.setCompaction(id, compaction);
    if (!d) return undefined;
    this.bus.publish({ type: 'domains' });
    await this.ctx.record({ severity: 'info', type: 'domain-changed', diskId: null, jobId: null, message: `Storage domain ${d.name}: in-place sparsify compacts ${COMPACTION_TEXT[compaction]}` });
    return this.getDomain(id);
  }

  // ---- hosts, events, policy

  async listHosts(): Promise<HostView[]> {
    const [hosts, mounts, domains, running, now] = await Promise.all([this.store.hosts.list(), this.store.hosts.mounts(), this.store.hosts.domains(), this.store.jobs.list({ status: ['running'] }), this.store.hosts.now()]);
    return hostViews(hosts, mounts, domains, running.map((j) => this.worker.active(j.id) ?? j), now);
  }

  async retireHost(name: string): Promise<'removed' | 'up' | 'unknown'> {
    const r = await this.store.hosts.remove(name);
    if (r === 'removed') {
      if (await this.store.vms.forgetHost(name)) this.bus.publish({ type: 'vms' });
      this.bus.publish({ type: 'hosts' });
    }
    return r;
  }

  listEvents(opts: { afterId?: number; limit?: number }): Promise<EventRecord[]> {
    return this.store.events.list(opts);
  }

  getPolicy(): Promise<PolicyConfig> {
    return this.policy.get();
  }

  async setPolicy(p: Partial<PolicyConfig>): Promise<PolicyConfig> {
    const next = await this.policy.set(p);
    this.bus.publish({ type: 'policy' });
    return next;
  }
}
