/** The service's API as the UI uses it: typed fetches, the token, and the live stream. */
import type { Summary } from './api-disks';

export type DiskStatus = 'ok' | 'locked' | 'in-use' | 'illegal' | 'unreachable';

/** When in-place sparsify compacts a domain's images. */
export type Compaction = 'always' | 'where-no-holes' | 'never';

/** A disk that is a block device: what Linux says about its discard support. */
export interface DeviceFacts {
  target: string;
  size: number;
  /** 0: the device cannot discard; null: not said. */
  discardMaxBytes: number | null;
  discardGranularity: number | null;
  provisioningMode: string | null;
  /** Mounted, swap, or under RAID/LVM/device-mapper on the host that scanned it. */
  held: boolean;
}

export interface Disk {
  id: string;
  name: string;
  path: string;
  domain: string;
  domainId: string;
  format: string | null;
  virtualSize: number | null;
  actualSize: number;
  allocation: 'sparse' | 'preallocated';
  chain: { depth: number; leaf: boolean; backingId: string | null; derivedIds: string[]; snapshots: number };
  status: DiskStatus;
  error: string | null;
  lockedBy: string | null;
  analysis: {
    state: 'pending' | 'done' | 'failed';
    dataBytes: number | null;
    /** Free in the guest and held by the disk's own file: what sparsify gives back. */
    reclaimableBytes: number | null;
    /** Free in the guest but held only by earlier snapshots (backing files): not reclaimable before a merge. */
    snapshotOnlyBytes: number | null;
    snapshotAdvice: string | null;
    warnings: string[];
    error: string | null;
    /** LUKS volumes: opened with a key from the service's keys file, or kept whole for want of one. */
    encrypted: { opened: number; keptWhole: number } | null;
  };
  reclaimableBytes: number | null;
  /** Released by holes (or BLKDISCARD) where the storage can; compacted as the domain's setting says. */
  storage: { canRelease: boolean; compaction: Compaction; compacts: boolean };
  device: DeviceFacts | null;
  /** The VMs that use it, with their state (every host's libvirt). */
  vms: Array<{ id: string; name: string; host: string; state: string; target: string }>;
  needsSparsify: boolean;
  sparsify: { allowed: boolean; mode: string; status?: number; code?: string; reason?: string };
}

export interface JobStep {
  name: string;
  status: string;
  done: number;
  total: number;
}

/** What an in-place job measured (never estimated). */
export interface JobResult {
  allocatedBefore: number | null;
  allocatedAfter: number | null;
  /** In all; of which by truncation (compaction) and by holes. Null on a block device. */
  givenBack: number | null;
  byTruncation: number;
  byHoles: number | null;
  discarded: number;
  released: boolean;
  compacted: boolean;
  endBefore: number;
  endAfter: number;
  bytesMoved: number;
  compactableEnd: number | null;
  isBlockDevice: boolean;
  compaction: Compaction;
}

export interface Job {
  id: string;
  diskId: string;
  diskName: string;
  options: { mode: string };
  status: 'pending' | 'running' | 'finished' | 'failed' | 'cancelled';
  steps: JobStep[];
  /** The host running it, or the last one that did. */
  host: string | null;
  attempts: number;
  createdAt: number;
  startedAt: number | null;
  endedAt: number | null;
  actualBefore: number | null;
  actualAfter: number | null;
  bytesReclaimed: number | null;
  result?: JobResult | null;
  /** A trim job's figures: each image's allocation before and after, and the guest agent's per-mountpoint figures. */
  trimResult?: TrimResult | null;
  error: string | null;
  progress: { done: number; total: number; percent: number };
  step: string | null;
}

export interface TrimResult {
  images: Array<{ target: string; source: string; diskId: string | null; allocatedBefore: number | null; allocatedAfter: number | null; givenBack: number | null }>;
  givenBack: number | null;
  guest: Array<{ path: string; trimmed: number | null; error: string | null }>;
  seconds: number;
}

export interface ServiceEvent {
  id: number;
  time: number;
  severity: 'info' | 'warning' | 'error';
  type: string;
  diskId: string | null;
  message: string;
}

export interface Info {
  version: string;
  host: string;
  database: 'sqlite' | 'postgres';
  defaultMode: string;
  modes: string[];
  domains: Array<{ id: string; name: string; path: string; reachable: boolean }>;
}

export interface Domain {
  id: string;
  name: string;
  compaction: Compaction;
  reachable: boolean;
  /** Some up host that reaches it can punch holes in its files. */
  canDiscard: boolean;
  hosts: Array<{ host: string; up: boolean; path: string; reachable: boolean; canDiscard: boolean; error: string | null }>;
}

export interface Host {
  name: string;
  status: 'up' | 'non-responsive' | 'stopped';
  lastHeartbeat: number;
  heartbeatAgeMs: number;
  version: string;
  url: string | null;
  concurrency: number;
  domains: Array<{ id: string; name: string; path: string; reachable: boolean; error: string | null }>;
  jobs: Array<{ id: string; diskName: string; status: string; step: string | null; percent: number }>;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The fault's code (e.g. `cursor-expired`), where the server gave one. */
    readonly code?: string,
  ) {
    super(message);
  }
}

const TOKEN_KEY = 'sparsify-token';

/** The token arrives once in the URL (#token=...), printed by the server; it is kept in localStorage. */
export function takeTokenFromUrl(): void {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]!));
    history.replaceState(null, '', location.pathname + location.search);
  }
}

export function getToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(t: string): void {
  localStorage.setItem(TOKEN_KEY, t);
}

function authHeaders(): Record<string, string> {
  const token = getToken();
  return token ? { authorization: `Bearer ${token}` } : {};
}

export async function call<T>(method: string, url: string, body?: unknown): Promise<T> {
  // Every call carries the token: a service that listens beyond localhost wants it for reads too.
  const headers: Record<string, string> = authHeaders();
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = (await res.json().catch(() => ({}))) as { fault?: { detail?: string; code?: string } };
  if (!res.ok) throw new ApiError(res.status, data.fault?.detail ?? `${res.status} ${res.statusText}`, data.fault?.code);
  return data as T;
}

export const api = {
  info: () => call<Info>('GET', '/api/info'),
  disks: () => call<{ disks: Disk[] }>('GET', '/api/disks').then((r) => r.disks),
  jobs: () => call<{ jobs: Job[] }>('GET', '/api/jobs?limit=50').then((r) => r.jobs),
  events: () => call<{ events: ServiceEvent[] }>('GET', '/api/events?limit=50').then((r) => r.events),
  hosts: () => call<{ hosts: Host[] }>('GET', '/api/hosts').then((r) => r.hosts),
  domains: () => call<{ domains: Domain[] }>('GET', '/api/domains').then((r) => r.domains),
  setCompaction: (id: string, compaction: Compaction) => call<{ domain: Domain }>('PATCH', `/api/domains/${id}`, { compaction }).then((r) => r.domain),
  sparsify: (id: string, mode: string) => call<{ job: Job }>('POST', `/api/disks/${id}/sparsify`, { mode }).then((r) => r.job),
  cancel: (id: string) => call<{ job: Job }>('POST', `/api/jobs/${id}/cancel`).then((r) => r.job),
  rescan: () => call<unknown>('POST', '/api/rescan'),
};

const STATUS_RANK: Record<Job['status'], number> = { pending: 0, running: 1, finished: 2, failed: 2, cancelled: 2 };

/**
 * The newer of two views of one job. Snapshots (a reload) and pushed updates can arrive out of
 * order; a job only moves forward, so the further-along view wins.
 */
export function newerJob(a: Job | undefined, b: Job): Job {
  if (!a) return b;
  const ra = STATUS_RANK[a.status];
  const rb = STATUS_RANK[b.status];
  if (ra !== rb) return rb > ra ? b : a;
  if (rb === 2) return a.endedAt && (!b.endedAt || a.endedAt >= b.endedAt) ? a : b;
  return b.progress.done >= a.progress.done ? b : a;
}

export interface StreamHandlers {
  disk: (d: Disk) => void;
  /** The totals of every disk, sent at most once a second while disks change. */
  summary: (s: Summary) => void;
  diskRemoved: (id: string) => void;
  job: (j: Job) => void;
  progress: (p: { jobId: string; done: number; total: number }) => void;
  event: (e: ServiceEvent) => void;
  /** The hosts changed (one came, went, or reaches its domains differently). */
  hosts: () => void;
  /** A storage domain's settings changed (on any host). */
  domains: () => void;
  /** The service lost touch with other hosts for a while: reload everything. */
  resync: () => void;
  connected: (ok: boolean) => void;
}

/** The server follows at most 500; 300 ids of 36 characters keep the request line well under Node's 16 KiB of headers. */
export const MAX_STREAM_DISKS = 300;

/**
 * The live stream, read with fetch so it can carry the token (EventSource cannot send headers);
 * reconnects 2 s after it drops, as EventSource would. With `disks`, the server sends `disk`
 * messages for those disks only (the rows on screen), not every disk's every change.
 */
export function openStream(h: StreamHandlers, disks?: string[]): () => void {
  const url = disks ? `/api/stream?disks=${disks.slice(0, MAX_STREAM_DISKS).map(encodeURIComponent).join(',')}` : '/api/stream';
  let closed = false;
  let ctl: AbortController | undefined;
  const dispatch = (type: string, data: string) => {
    const v = JSON.parse(data) as unknown;
    if (type === 'disk') h.disk(v as Disk);
    else if (type === 'summary') h.summary(v as Summary);
    else if (type === 'disk-removed') h.diskRemoved((v as { id: string }).id);
    else if (type === 'job') h.job(v as Job);
    else if (type === 'progress') h.progress(v as { jobId: string; done: number; total: number });
    else if (type === 'event') h.event(v as ServiceEvent);
    else if (type === 'hosts') h.hosts();
    else if (type === 'domains') h.domains();
    else if (type === 'resync') h.resync();
  };
  const connect = async () => {
    while (!closed) {
      ctl = new AbortController();
      try {
        const res = await fetch(url, { headers: authHeaders(), signal: ctl.signal });
        if (!res.ok || !res.body) throw new Error(`${res.status}`);
        h.connected(true);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            let type = 'message';
            const data: string[] = [];
            for (const line of block.split('\n')) {
              if (line.startsWith('event: ')) type = line.slice(7);
              else if (line.startsWith('data: ')) data.push(line.slice(6));
            }
            if (data.length) dispatch(type, data.join('\n'));
          }
        }
      } catch {
        // dropped, refused or aborted: try again below
      }
      if (closed) return;
      h.connected(false);
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  void connect();
  return () => {
    closed = true;
    ctl?.abort();
  };
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  // A measured difference can be a little negative (compaction's own metadata took a cluster).
  if (n < 0) return `−${bytes(-n)}`;
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`;
}
