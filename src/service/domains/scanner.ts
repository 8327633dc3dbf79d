/**
 * Finds the images in the storage domains and keeps their records fresh: a cheap probe (format,
 * chain, sizes, QEMU's write lock) whenever the file's stat changes, and the full analysis (the
 * DiskMap) in the background, cached by that stat. In a cluster one host scans each domain: the
 * first up host, by name, that reaches it. Disk ids are random UUIDs kept in the store: a file
 * renamed inside its domain keeps its id (found by inode), and an id only leads back to a file
 * through Mounts.pathOf. A symlink to a block device is a disk too (see device-probe.ts).
 */
import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { basename, join, relative, sep } from 'node:path';
import { openImage, type DiskMapJson, type NodeJson } from '../../index.js';
import type { EnginePool } from '../engine/pool.js';
import type { ServiceContext } from '../context.js';
import type { DiskRecord, BackingRef, AnalysisSummary, DeviceFacts } from '../store/records.js';
import { isDuplicate } from '../store/disks.js';
import { heldForWriting, hostDataBytes } from './host-probe.js';
import type { Mounts, Mount } from './mounts.js';
import { statKey, recordKey } from './stat-key.js';
import { deviceBehind, deviceKey, isDeviceLink } from './device-probe.js';

const MAX_DEPTH = 6;
const MAX_FILES = 20_000;
/** A device's contents change without stat showing it: its analysis is made again when this old (at a scan). */
const DEVICE_ANALYSIS_MAX_AGE_MS = 10 * 60_000;

/** What a domain entry is now: a regular file, or a symlink to a block device, with the key of its version. */
interface Entry {
  st: Stats;
  device: DeviceFacts | null;
  key: string;
}

async function entryAt(full: string): Promise<Entry | undefined> {
  let st: Stats;
  try {
    st = await lstat(full);
  } catch {
    return undefined;
  }
  if (st.isFile()) return { st, device: null, key: statKey(st) };
  if (!st.isSymbolicLink()) return undefined;
  const device = deviceBehind(full);
  return device ? { st, device, key: deviceKey(st, device) } : undefined;
}

const staleDevice = (d: DiskRecord): boolean => !!d.device && (d.analyzedAt ?? 0) < Date.now() - DEVICE_ANALYSIS_MAX_AGE_MS;


/** The analysis in brief: what the disk list shows. */
export function summarize(map: DiskMapJson): AnalysisSummary {
  const encrypted = { opened: 0, keptWhole: 0 };
  const walk = (n: NodeJson) => {
    if (n.contentKind === 'encrypted') {
      if (n.children.length) encrypted.opened++;
      else encrypted.keptWhole++;
    }
    n.children.forEach(walk);
  };
  walk(map.root);
  return {
    dataBytes: map.dataBytes,
    reclaimableBytes: map.reclaimableBytes,
    ownDataBytes: map.ownDataBytes,
    snapshotOnlyBytes: map.snapshotOnlyBytes,
    ...(map.snapshotAdvice ? { snapshotAdvice: map.snapshotAdvice } : {}),
    warnings: map.warnings,
    ...(encrypted.opened || encrypted.keptWhole ? { encrypted } : {}),
  };
}

export class Scanner {
  private scanning: Promise<void> | undefined;
  private rescanAgain = false;
  /** Disks waiting for analysis, in order (a Set keeps insertion order). */
  private readonly analysisQueue = new Set<string>();
  private analyzing: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly mounts: Mounts,
    /** Is this host the one that scans the domain now? */
    private readonly isScanner: (domainId: string) => Promise<boolean>,
    private readonly engine: EnginePool,
  ) {}

  /** Rescan the domains this host scans; concurrent callers share one scan (and one more if asked meanwhile). */
  scanAll(): Promise<void> {
    if (this.scanning) {
      this.rescanAgain = true;
      return this.scanning;
    }
    this.scanning = (async () => {
      try {
        do {
          this.rescanAgain = false;
          for (const m of this.mounts.list()) {
            if (this.closed) return;
            if (m.reachable && (await this.isScanner(m.id))) await this.scanDomain(m);
          }
        } while (this.rescanAgain && !this.closed);
      } finally {
        this.scanning = undefined;
      }
    })();
    return this.scanning;
  }

  private async listFiles(m: Mount): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string, depth: number) => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (out.length >= MAX_FILES) return;
        // Hidden files are ours (temporary copies, probes, the domain's identity) or not disks.
        if (e.name.startsWith('.')) continue;
        const full = join(dir, e.name);
        if (e.isDirectory() && depth < MAX_DEPTH) await walk(full, depth + 1);
        else if (e.isFile()) out.push(relative(m.root, full));
        // Symlinks are not followed (they could lead out of the domain), but one to a block device is a disk.
        else if (e.isSymbolicLink() && isDeviceLink(full)) out.push(relative(m.root, full));
      }
    };
    await walk(m.root, 0);
    return out.sort();
  }

  private async scanDomain(m: Mount): Promise<void> {
    const files = await this.listFiles(m);
    // The folder went away during the listing: never mistake that for every disk being deleted.
    if ((await this.mounts.check()).some((c) => c.id === m.id) || !m.reachable) return;
    const seen = new Set<string>();
    for (const rel of files) {
      if (this.closed) return;
      const d = await this.refreshAt(m, rel);
      if (d) seen.add(d.id);
    }
    for (const d of await this.ctx.store.disks.list({ domainId: m.id })) {
      if (seen.has(d.id) || d.lockedBy) continue;
      d.present = false;
      await this.ctx.store.disks.put(d);
      await this.ctx.record({ severity: 'info', type: 'disk-removed', diskId: d.id, jobId: null, message: `Disk ${d.name} is no longer in its storage domain` });
      this.ctx.bus.publish({ type: 'disk-removed', id: d.id });
    }
    await this.linkChains(m.id);
  }

  /** Re-read one disk now (after a job, or before validating a request). Needs its domain reachable here. */
  async refreshDisk(id: string): Promise<DiskRecord | undefined> {
    const d = await this.ctx.store.disks.get(id);
    if (!d) return undefined;
    const m = this.mounts.get(d.domainId);
    if (!m?.reachable) return d;
    const r = await this.refreshAt(m, d.rel);
    if (r) await this.linkOne(r);
    return this.ctx.store.disks.get(r?.id ?? id);
  }

  private async refreshAt(m: Mount, rel: string): Promise<DiskRecord | undefined> {
    const full = join(m.root, rel);
    const entry = await entryAt(full);
    if (!entry) return undefined;
    const { st, device, key } = entry;
    const now = Date.now();
    const store = this.ctx.store.disks;
    let d = await store.findAt(m.id, rel);
    if (d && !d.present && d.ino !== st.ino) d = undefined;
    if (!d) {
      // A file moved within the domain keeps its id.
      const moved = await store.findByInode(m.id, st.ino);
      if (moved && (!moved.present || !this.exists(moved))) d = { ...moved, rel, name: basename(rel) };
    }
    const isNew = !d;
    const inUse = heldForWriting(full);
    // A device's discard facts may change with its stat key unchanged: then it is recorded again.
    if (d && d.present && recordKey(d) === key && JSON.stringify(d.device ?? null) === JSON.stringify(device)) {
      if (d.inUse !== inUse) {
        d.inUse = inUse;
        await store.setInUse(d.id, inUse);
        this.ctx.bus.publish({ type: 'disk', id: d.id });
      }
      if (d.health === 'ok' && (d.analysisKey !== key || staleDevice(d))) this.queueAnalysis(d.id);
      return d;
    }
    const rec: DiskRecord = d ?? {
      id: randomUUID(),
      domainId: m.id,
      rel,
      name: basename(rel),
      ino: st.ino,
      size: st.size,
      mtimeMs: st.mtimeMs,
      ctimeMs: st.ctimeMs,
      format: null,
      virtualSize: null,
      actualSize: st.blocks * 512,
      hostDataBytes: 0,
      chain: [],
      backingRef: null,
      backingId: null,
      snapshots: 0,
      health: 'ok',
      error: null,
      allocationOverride: null,
      analysis: null,
      analysisKey: null,
      analysisError: null,
      analyzedAt: null,
      inUse,
      lockedBy: null,
      present: true,
      firstSeen: now,
      lastSeen: now,
    };
    // A device's size is its capacity, and all of it is what it takes of its volume group or SAN.
    const size = device ? device.size : st.size;
    Object.assign(rec, { ino: st.ino, size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, actualSize: device ? device.size : st.blocks * 512, present: true, lastSeen: now, inUse, device });
    await this.probe(rec, full);
    try {
      await store.put(rec);
    } catch (e) {
      // Another host recorded this file at the same moment: theirs stands.
      if (isDuplicate(e)) return store.findAt(m.id, rel);
      throw e;
    }
    if (isNew) await this.ctx.record({ severity: 'info', type: 'disk-added', diskId: rec.id, jobId: null, message: `Disk ${rec.name} found (${rec.format ?? 'unreadable'})` });
    this.ctx.bus.publish({ type: 'disk', id: rec.id });
    if (rec.health === 'ok' && rec.analysisKey !== key) this.queueAnalysis(rec.id);
    return rec;
  }

  private exists(d: DiskRecord): boolean {
    try {
      this.mounts.pathOf(d);
      return true;
    } catch {
      return false;
    }
  }

  /** A path of the chain as a domain and a path inside it, when it lies in a domain reachable here. */
  private refOf(path: string): BackingRef | null {
    for (const m of this.mounts.list()) {
      if (path.startsWith(m.root + sep)) return { domainId: m.id, rel: relative(m.root, path) };
    }
    return null;
  }

  /** Format, sizes and chain: what the engine says when it opens the image (no locks taken). */
  private async probe(rec: DiskRecord, full: string): Promise<void> {
    try {
      // A device has no holes to see: all of it counts as written (it is never taken for preallocated).
      rec.hostDataBytes = rec.device ? rec.actualSize : hostDataBytes(full);
    } catch {
      rec.hostDataBytes = rec.actualSize;
    }
    try {
      const image = await openImage(full, { lock: 'none' });
      try {
        rec.format = image.format;
        rec.virtualSize = image.virtualSize;
        const layers = image.layers();
        const sub = layers[0]?.details?.subformat;
        rec.subformat = typeof sub === 'string' ? sub : null;
        rec.chain = layers.map((l) => {
          try {
            return realpathSync(l.path);
          } catch {
            return l.path;
          }
        });
        rec.backingRef = rec.chain.length > 1 ? this.refOf(rec.chain[1]!) : null;
        rec.snapshots = Number(layers[0]?.details?.snapshots ?? 0) || 0;
        rec.health = 'ok';
        rec.error = null;
      } finally {
        await image.close();
      }
    } catch (e) {
      const wasOk = rec.health === 'ok' && rec.format !== null;
      rec.health = 'illegal';
      rec.error = (e as Error).message;
      rec.format = null;
      rec.subformat = null;
      rec.chain = [];
      rec.backingRef = null;
      if (wasOk || rec.analysisKey === null) await this.ctx.record({ severity: 'warning', type: 'disk-illegal', diskId: rec.id, jobId: null, message: `Disk ${rec.name} cannot be read: ${rec.error}` });
      rec.analysisKey = null;
    }
  }

  /** Point one disk at the record of its backing file (a refresh; the full scan links them all). */
  private async linkOne(d: DiskRecord): Promise<void> {
    const backing = d.backingRef ? ((await this.ctx.store.disks.findAt(d.backingRef.domainId, d.backingRef.rel))?.id ?? null) : null;
    if (backing !== d.backingId) {
      await this.ctx.store.disks.setBacking(d.id, backing);
      this.ctx.bus.publish({ type: 'disk', id: d.id });
    }
  }

  /** Point each disk of the domain at the disk record of its backing file, when that file is in a domain too. */
  private async linkChains(domainId: string): Promise<void> {
    const all = await this.ctx.store.disks.list();
    const byRef = new Map(all.map((d) => [`${d.domainId}\u0000${d.rel}`, d.id]));
    for (const d of all) {
      if (d.domainId !== domainId) continue;
      const backing = d.backingRef ? (byRef.get(`${d.backingRef.domainId}\u0000${d.backingRef.rel}`) ?? null) : null;
      if (backing !== d.backingId) {
        await this.ctx.store.disks.setBacking(d.id, backing);
        this.ctx.bus.publish({ type: 'disk', id: d.id });
      }
    }
  }

  queueAnalysis(id: string): void {
    this.analysisQueue.add(id);
    this.analyzing ??= this.drainAnalysis().finally(() => (this.analyzing = undefined));
  }

  private async drainAnalysis(): Promise<void> {
    while (this.analysisQueue.size && !this.closed) {
      const id = this.analysisQueue.values().next().value as string;
      this.analysisQueue.delete(id);
      try {
        await this.analyze(id);
      } catch (e) {
        this.ctx.log.warn(`analysis of disk ${id} not stored: ${(e as Error).message}`);
      }
      // Let requests in between analyses.
      await new Promise((r) => setImmediate(r));
    }
  }

  /**
   * The DiskMap of one disk, stored with the stat key it was made for. A disk a job holds is left
   * alone (its job re-analyzes it when done) unless `forJob` says this is that job.
   */
  async analyze(id: string, forJob?: string): Promise<void> {
    const d = await this.ctx.store.disks.get(id);
    if (!d || !d.present || d.health !== 'ok' || (d.lockedBy && d.lockedBy !== forJob)) return;
    let full: string;
    let key: string;
    try {
      full = this.mounts.pathOf(d);
      const entry = await entryAt(full);
      if (!entry) return;
      key = entry.key;
    } catch {
      return;
    }
    if (d.analysisKey === key && !forJob && !staleDevice(d)) return;
    let map: DiskMapJson | null = null;
    let error: string | null = null;
    try {
      map = (await this.engine.analyze(full, d.format ?? undefined)).map;
    } catch (e) {
      error = (e as Error).message;
      this.ctx.log.warn(`analysis of ${d.name} failed: ${error}`);
    }
    // The file may have changed meanwhile: stored under the key it had before, so a change is seen again.
    const summary = map ? summarize(map) : null;
    if (await this.ctx.store.disks.setAnalysis(id, d.ino, { analysis: summary, analysisKey: key, analysisError: error, analyzedAt: Date.now() }, map)) this.ctx.bus.publish({ type: 'disk', id });
  }

  /** Wait until no scan or analysis is queued or running (tests, benchmarks). */
  async idle(): Promise<void> {
    while (this.scanning || this.analyzing || this.analysisQueue.size) await new Promise((r) => setTimeout(r, 20));
  }

  close(): void {
    this.closed = true;
  }
}
