/**
 * The service as one object: store, scanner, job runner, scheduler and policy, and the views the
 * API returns. The HTTP layer (server.ts) only translates between this and requests.
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ServiceConfig, PolicyConfig, SparsifyMode } from './config.js';
import { SqliteStore, type Store, type DiskRecord, type JobRecord, type JobOptions, type Allocation } from './store.js';
import { Scanner } from './scanner.js';
import { JobRunner } from './jobs.js';
import { Bus } from './bus.js';
import { validateSparsify, allocationOf, type Refusal } from './validate.js';

export interface DiskView {
  id: string;
  href: string;
  name: string;
  domain: string;
  path: string;
  format: string | null;
  virtualSize: number | null;
  actualSize: number;
  allocation: Allocation;
  allocationSource: 'detected' | 'user';
  chain: { depth: number; leaf: boolean; backingId: string | null; backingFile: string | null; derivedIds: string[]; snapshots: number };
  status: 'ok' | 'locked' | 'in-use' | 'illegal';
  error: string | null;
  lockedBy: string | null;
  analysis: { state: 'pending' | 'done' | 'failed'; analyzedAt: number | null; dataBytes: number | null; reclaimableBytes: number | null; warnings: string[]; error: string | null };
  reclaimableBytes: number | null;
  needsSparsify: boolean;
  /** Would POST /sparsify (default mode) be accepted now? If not, why. */
  sparsify: { allowed: boolean; mode: SparsifyMode; status?: number; code?: string; reason?: string };
}

export interface JobView extends JobRecord {
  href: string;
  progress: { done: number; total: number; percent: number };
  step: string | null;
}

const IN_USE_TTL_MS = 1000;

export class Service {
  readonly store: Store;
  readonly bus = new Bus();
  readonly scanner: Scanner;
  readonly runner: JobRunner;
  readonly token: string;
  readonly tokenGenerated: boolean;
  private readonly inUseCache = new Map<string, { at: number; value: boolean }>();
  private timers: NodeJS.Timeout[] = [];

  constructor(
    readonly config: ServiceConfig,
    readonly log: (s: string) => void,
  ) {
    mkdirSync(config.dataDir, { recursive: true });
    this.store = new SqliteStore(join(config.dataDir, 'sparsify.db'));
    const t = this.loadToken();
    this.token = t.token;
    this.tokenGenerated = t.generated;
    this.scanner = new Scanner(this.store, config.domains, this.bus, log);
    this.runner = new JobRunner(this.store, this.scanner, this.bus, config, log);
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

  /** Settle what a previous run left, then scan in the background (the API answers meanwhile). */
  async start(): Promise<void> {
    this.runner.recover();
    this.runner.pump();
    void this.scanner.scanAll().catch((e) => this.log(`scan failed: ${(e as Error).message}`));
    if (this.config.scanIntervalSeconds > 0) {
      this.timers.push(setInterval(() => void this.scanner.scanAll().catch((e) => this.log(`scan failed: ${(e as Error).message}`)), this.config.scanIntervalSeconds * 1000));
    }
    this.armSchedule();
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.scanner.close();
    await this.runner.stop();
    this.store.close();
  }

  // ---- policy

  policy(): PolicyConfig {
    const saved = this.store.getSetting('policy');
    return saved ? { ...this.config.policy, ...(JSON.parse(saved) as Partial<PolicyConfig>) } : { ...this.config.policy };
  }

  setPolicy(p: Partial<PolicyConfig>): PolicyConfig {
    const next = { ...this.policy(), ...p };
    this.store.setSetting('policy', JSON.stringify(next));
    this.armSchedule();
    return next;
  }

  private scheduleTimer: NodeJS.Timeout | undefined;

  private armSchedule(): void {
    if (this.scheduleTimer) clearInterval(this.scheduleTimer);
    this.scheduleTimer = undefined;
    const p = this.policy();
    if (!p.scheduleEnabled) return;
    this.scheduleTimer = setInterval(() => this.runSchedule(), p.scheduleIntervalSeconds * 1000);
    this.timers.push(this.scheduleTimer);
  }

  /** The periodic policy: queue a job for every disk that needs sparsify and would be accepted. */
  runSchedule(): JobRecord[] {
    const queued: JobRecord[] = [];
    for (const d of this.store.listDisks()) {
      if (!this.needsSparsify(d)) continue;
      const r = this.runner.submit(d.id, { mode: this.config.defaultMode, ignore: [], zero: [] }, 'schedule');
      if ('job' in r) queued.push(r.job);
    }
    return queued;
  }

  needsSparsify(d: DiskRecord, p: PolicyConfig = this.policy()): boolean {
    const r = d.analysis?.reclaimableBytes ?? 0;
    return r > 0 && r >= p.thresholdBytes && r * 100 >= p.thresholdPercent * d.actualSize;
  }

  // ---- disks

  private inUse(d: DiskRecord): boolean {
    const c = this.inUseCache.get(d.id);
    const now = Date.now();
    if (c && now - c.at < IN_USE_TTL_MS) return c.value;
    const value = this.scanner.inUse(d);
    this.inUseCache.set(d.id, { at: now, value });
    return value;
  }

  diskView(d: DiskRecord, all: DiskRecord[], p: PolicyConfig): DiskView {
    const derived = all.filter((x) => x.backingId === d.id && x.id !== d.id);
    const inUse = this.inUse(d);
    const dom = this.scanner.domains[d.domain];
    const refusal = validateSparsify(d, { heldForWriting: inUse, derived, canDiscard: dom?.canDiscard ?? false, mode: this.config.defaultMode });
    const a = d.analysis;
    const status: DiskView['status'] = d.lockedBy ? 'locked' : inUse ? 'in-use' : d.health === 'illegal' ? 'illegal' : 'ok';
    return {
      id: d.id,
      href: `/api/disks/${d.id}`,
      name: d.name,
      domain: dom?.root ?? '',
      path: d.rel,
      format: d.format,
      virtualSize: d.virtualSize,
      actualSize: d.actualSize,
      allocation: allocationOf(d),
      allocationSource: d.allocationOverride ? 'user' : 'detected',
      chain: { depth: d.chain.length, leaf: derived.length === 0, backingId: d.backingId, backingFile: d.chain[1] ?? null, derivedIds: derived.map((x) => x.id), snapshots: d.snapshots },
      status,
      error: d.error,
      lockedBy: d.lockedBy,
      analysis: {
        state: a && d.analysisKey ? 'done' : d.analysisError || d.health === 'illegal' ? 'failed' : 'pending',
        analyzedAt: d.analyzedAt,
        dataBytes: a?.dataBytes ?? null,
        reclaimableBytes: a?.reclaimableBytes ?? null,
        warnings: a?.warnings ?? [],
        error: d.analysisError ?? (d.health === 'illegal' ? d.error : null),
      },
      reclaimableBytes: a?.reclaimableBytes ?? null,
      needsSparsify: this.needsSparsify(d, p),
      sparsify: refusal ? { allowed: false, mode: this.config.defaultMode, status: refusal.status, code: refusal.code, reason: refusal.detail } : { allowed: true, mode: this.config.defaultMode },
    };
  }

  listDiskViews(): DiskView[] {
    const all = this.store.listDisks();
    const p = this.policy();
    return all.map((d) => this.diskView(d, all, p));
  }

  getDiskView(id: string): (DiskView & { map: unknown; layers: unknown }) | undefined {
    const all = this.store.listDisks();
    const d = all.find((x) => x.id === id);
    if (!d) return undefined;
    return { ...this.diskView(d, all, this.policy()), map: d.analysis?.root ?? null, layers: d.analysis?.layers ?? null };
  }

  setAllocation(id: string, allocation: Allocation | 'auto'): DiskView | undefined {
    const d = this.store.getDisk(id);
    if (!d || !d.present) return undefined;
    d.allocationOverride = allocation === 'auto' ? null : allocation;
    this.store.putDisk(d);
    this.bus.publish({ type: 'disk', data: { id } });
    return this.getDiskView(id);
  }

  /** POST /disks/{id}/sparsify: refresh what we know of the disk, then validate and lock at once. */
  async requestSparsify(id: string, opts: Partial<JobOptions>): Promise<{ job: JobView } | { refusal: Refusal }> {
    if (!this.store.getDisk(id)) return { refusal: { status: 404, code: 'disk-not-found', detail: 'no such disk' } };
    if (!this.store.getDisk(id)?.lockedBy) await this.scanner.refreshDisk(id);
    this.inUseCache.delete(id);
    const r = this.runner.submit(id, { mode: opts.mode ?? this.config.defaultMode, ignore: opts.ignore ?? [], zero: opts.zero ?? [] }, 'api');
    return 'job' in r ? { job: this.jobView(r.job) } : r;
  }

  // ---- jobs

  getJob(id: string): JobRecord | undefined {
    return this.runner.active.get(id) ?? this.store.getJob(id);
  }

  listJobs(opts: { status?: JobRecord['status'][]; diskId?: string; limit?: number }): JobRecord[] {
    return this.store.listJobs(opts).map((j) => this.runner.active.get(j.id) ?? j);
  }

  jobView(j: JobRecord): JobView {
    const ex = j.steps.find((s) => s.name === 'executing');
    const cur = j.steps.find((s) => s.status === 'running');
    const done = ex?.done ?? 0;
    const total = ex?.total ?? 0;
    const percent = j.status === 'finished' ? 100 : total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : 0;
    return { ...j, href: `/api/jobs/${j.id}`, progress: { done, total, percent }, step: cur?.name ?? null };
  }
}
