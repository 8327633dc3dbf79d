/**
 * What the API shows of disks, jobs and hosts: store records joined with what the cluster knows
 * (which domains are reachable, the policy, who derives from whom), and nothing read from disk,
 * so listing 2,000 disks stays quick.
 */
import type { PolicyConfig } from './config.js';
import type { CompactionSetting, DeviceFacts, DiskRecord, DomainRecord, HostDomain, HostRecord, JobRecord, SparsifyMode, Allocation } from './store/records.js';
import type { Store } from './store/store.js';
import { validateSparsify, allocationOf, defaultModeOf, storageCanRelease, willCompact } from './jobs/validate.js';
import { needsSparsify } from './needs-sparsify.js';
import { vmsOf, type VmIndex, type VmRef } from './vms/attachments.js';
import { recordKey } from './domains/stat-key.js';

export interface DomainState {
  id: string;
  name: string;
  /** Some up host reaches it. */
  reachable: boolean;
  canDiscard: boolean;
  /** When in-place sparsify compacts its images. */
  compaction: CompactionSetting;
  /** Up hosts that reach it. */
  hosts: string[];
}

/** Which domains the up hosts reach now. */
export async function domainStates(store: Store): Promise<Map<string, DomainState>> {
  const [domains, mounts, hosts] = await Promise.all([store.hosts.domains(), store.hosts.mounts(), store.hosts.list()]);
  const up = new Set(hosts.filter((h) => h.status === 'up').map((h) => h.name));
  const out = new Map<string, DomainState>(domains.map((d: DomainRecord) => [d.id, { id: d.id, name: d.name, reachable: false, canDiscard: false, compaction: d.compaction, hosts: [] }]));
  for (const m of mounts) {
    const s = out.get(m.domainId);
    if (!s || !m.reachable || !up.has(m.host)) continue;
    s.reachable = true;
    s.canDiscard ||= m.canDiscard;
    s.hosts.push(m.host);
  }
  return out;
}

/** A storage domain as the API shows it: its settings, and how each host mounts it. */
export interface DomainView {
  id: string;
  href: string;
  name: string;
  createdAt: number;
  compaction: CompactionSetting;
  /** Some up host reaches it. */
  reachable: boolean;
  /** Some up host that reaches it can punch holes in its files. */
  canDiscard: boolean;
  hosts: Array<{ host: string; up: boolean; path: string; reachable: boolean; canDiscard: boolean; error: string | null; checkedAt: number }>;
}

export function domainViews(domains: readonly DomainRecord[], mounts: readonly HostDomain[], hosts: readonly HostRecord[]): DomainView[] {
  const up = new Set(hosts.filter((h) => h.status === 'up').map((h) => h.name));
  return domains.map((d) => {
    const own = mounts.filter((m) => m.domainId === d.id);
    const live = own.filter((m) => m.reachable && up.has(m.host));
    return {
      id: d.id,
      href: `/api/domains/${d.id}`,
      name: d.name,
      createdAt: d.createdAt,
      compaction: d.compaction,
      reachable: live.length > 0,
      canDiscard: live.some((m) => m.canDiscard),
      hosts: own.map((m) => ({ host: m.host, up: up.has(m.host), path: m.path, reachable: m.reachable, canDiscard: m.canDiscard, error: m.error, checkedAt: m.checkedAt })),
    };
  });
}

export type DiskStatus = 'ok' | 'locked' | 'in-use' | 'illegal' | 'unreachable';

export interface DiskView {
  id: string;
  href: string;
  name: string;
  domain: string;
  domainId: string;
  path: string;
  format: string | null;
  virtualSize: number | null;
  actualSize: number;
  allocation: Allocation;
  allocationSource: 'detected' | 'user';
  chain: { depth: number; leaf: boolean; backingId: string | null; backingFile: string | null; derivedIds: string[]; snapshots: number };
  status: DiskStatus;
  error: string | null;
  lockedBy: string | null;
  analysis: {
    state: 'pending' | 'done' | 'failed';
    analyzedAt: number | null;
    dataBytes: number | null;
    /** Free in the guest and held by the disk's own file: what sparsify gives back. */
    reclaimableBytes: number | null;
    /** Free in the guest but held only by its backing files (earlier snapshots): not reclaimable before a merge. */
    snapshotOnlyBytes: number | null;
    /** The advice to merge the snapshots first, when they hold free space. */
    snapshotAdvice: string | null;
    warnings: string[];
    error: string | null;
    /** LUKS volumes: opened with a key from the keys file, or kept whole (no key). */
    encrypted: { opened: number; keptWhole: number } | null;
  };
  reclaimableBytes: number | null;
  /** How space goes back where it lies: released (holes, BLKDISCARD), and whether an in-place job compacts it (the domain's setting, or the storage needing it). */
  storage: { canRelease: boolean; compaction: CompactionSetting; compacts: boolean };
  /** A block device (the domain holds a symlink to it): what Linux says about its discard support. */
  device: DeviceFacts | null;
  /** The VMs that use it (every host's libvirt), with their state. */
  vms: VmRef[];
  needsSparsify: boolean;
  /** Would POST /sparsify (default mode) be accepted now? If not, why. */
  sparsify: { allowed: boolean; mode: SparsifyMode; status?: number; code?: string; reason?: string };
}

export interface ViewContext {
  policy: PolicyConfig;
  domains: Map<string, DomainState>;
  /** Disk id -> disks whose backing file it is. */
  derived: Map<string, DiskRecord[]>;
  defaultMode: SparsifyMode;
  /** Which VMs use which disk (every host's libvirt). */
  vms: VmIndex;
}

export function derivedIndex(all: readonly DiskRecord[]): Map<string, DiskRecord[]> {
  const m = new Map<string, DiskRecord[]>();
  for (const d of all) {
    if (!d.backingId || d.backingId === d.id) continue;
    const l = m.get(d.backingId);
    if (l) l.push(d);
    else m.set(d.backingId, [d]);
  }
  return m;
}

export function diskView(d: DiskRecord, v: ViewContext): DiskView {
  const derived = v.derived.get(d.id) ?? [];
  const dom = v.domains.get(d.domainId);
  const vms = vmsOf(v.vms, d);
  const mode = defaultModeOf(d, v.defaultMode);
  const compaction = dom?.compaction ?? 'where-no-holes';
  const canRelease = storageCanRelease(d, dom?.canDiscard ?? false);
  const refusal = validateSparsify(d, { heldForWriting: d.inUse, derived, reachable: dom?.reachable ?? false, canDiscard: dom?.canDiscard ?? false, compaction, mode, vms });
  const a = d.analysis;
  const status: DiskStatus = d.lockedBy ? 'locked' : !dom?.reachable ? 'unreachable' : d.inUse || d.device?.held || refusal?.code === 'vm-not-down' ? 'in-use' : d.health === 'illegal' ? 'illegal' : 'ok';
  return {
    id: d.id,
    href: `/api/disks/${d.id}`,
    name: d.name,
    domain: dom?.name ?? d.domainId,
    domainId: d.domainId,
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
      // Pending until an analysis of the file as it is now is stored (after a job: its re-analysis).
      state: d.health === 'illegal' || (d.analysisError && d.analysisKey === recordKey(d)) ? 'failed' : a && d.analysisKey === recordKey(d) ? 'done' : 'pending',
      analyzedAt: d.analyzedAt,
      dataBytes: a?.dataBytes ?? null,
      reclaimableBytes: a?.reclaimableBytes ?? null,
      snapshotOnlyBytes: a ? (a.snapshotOnlyBytes ?? 0) : null,
      snapshotAdvice: a?.snapshotAdvice ?? null,
      warnings: a?.warnings ?? [],
      error: d.analysisError ?? (d.health === 'illegal' ? d.error : null),
      encrypted: a?.encrypted ?? null,
    },
    reclaimableBytes: a?.reclaimableBytes ?? null,
    storage: { canRelease, compaction, compacts: willCompact(d, compaction, canRelease) },
    device: d.device ?? null,
    vms,
    needsSparsify: needsSparsify(d, v.policy),
    sparsify: refusal ? { allowed: false, mode, status: refusal.status, code: refusal.code, reason: refusal.detail } : { allowed: true, mode },
  };
}

export interface JobView extends JobRecord {
  href: string;
  progress: { done: number; total: number; percent: number };
  step: string | null;
}

export function jobView(j: JobRecord): JobView {
  const ex = j.steps.find((s) => s.name === 'executing');
  const cur = j.steps.find((s) => s.status === 'running');
  const done = ex?.done ?? 0;
  const total = ex?.total ?? 0;
  const percent = j.status === 'finished' ? 100 : total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : 0;
  return { ...j, href: `/api/jobs/${j.id}`, progress: { done, total, percent }, step: cur?.name ?? null };
}

export interface HostView {
  name: string;
  status: HostRecord['status'];
  lastHeartbeat: number;
  /** By the database's clock. */
  heartbeatAgeMs: number;
  version: string;
  url: string | null;
  startedAt: number;
  concurrency: number;
  domains: Array<{ id: string; name: string; path: string; reachable: boolean; canDiscard: boolean; error: string | null }>;
  jobs: Array<{ id: string; diskId: string; diskName: string; status: JobRecord['status']; step: string | null; percent: number }>;
}

export function hostViews(hosts: HostRecord[], mounts: HostDomain[], domains: DomainRecord[], running: JobRecord[], now: number): HostView[] {
  const names = new Map(domains.map((d) => [d.id, d.name]));
  return hosts.map((h) => ({
    name: h.name,
    status: h.status,
    lastHeartbeat: h.lastHeartbeat,
    heartbeatAgeMs: Math.max(0, now - h.lastHeartbeat),
    version: h.version,
    url: h.url,
    startedAt: h.startedAt,
    concurrency: h.concurrency,
    domains: mounts.filter((m) => m.host === h.name).map((m) => ({ id: m.domainId, name: names.get(m.domainId) ?? m.domainId, path: m.path, reachable: m.reachable, canDiscard: m.canDiscard, error: m.error })),
    jobs: running
      .filter((j) => j.host === h.name)
      .map((j) => {
        const v = jobView(j);
        return { id: j.id, diskId: j.diskId, diskName: j.diskName, status: j.status, step: v.step, percent: v.progress.percent };
      }),
  }));
}
