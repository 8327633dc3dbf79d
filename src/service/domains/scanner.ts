/**
 * Finds the images in the storage domains and keeps their records fresh: a cheap probe (format,
 * chain, sizes, QEMU's write lock) whenever the file's stat changes, and the full analysis (the
 * DiskMap) in the background, cached by that stat. In a cluster one host scans each domain: the
 * first up host, by name, that reaches it. Disk ids are random UUIDs kept in the store: a file
 * renamed inside its domain keeps its id (found by inode), and an id only leads back to a file
 * through Mounts.pathOf. A symlink to a block device is a disk too (see device-probe.ts). New and
 * changed disks are written WRITE_BATCH to a transaction; the loop over unchanged files gives the
 * event loop a turn every SLICE_MS (time-slice.ts); analyses are analyzer.ts's.
 */
import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { basename, join, relative, sep } from 'node:path';
import { openImage } from '../../index.js';
import type { EnginePool } from '../engine/pool.js';
import type { ServiceContext } from '../context.js';
import type { DiskRecord, BackingRef, NewEvent } from '../store/records.js';
import { isDuplicate, type ScanEntry } from '../store/disks.js';
import { heldForWriting, hostDataBytes } from './host-probe.js';
import type { Mounts, Mount } from './mounts.js';
import { recordKey } from './stat-key.js';
import { isDeviceLink } from './device-probe.js';
import { entryAt, type Entry } from './entry.js';
import { TimeSlice } from './time-slice.js';
import { Analyzer, staleDevice } from './analyzer.js';


const MAX_DEPTH = 6;
const MAX_FILES = 250_000;
/**
 * New or changed disks written in one transaction during a scan: a commit per disk (SQLite's WAL
 * checkpoints, PostgreSQL's fsync) made the first listing of 100,000 disks take 6 minutes.
 */
const WRITE_BATCH = 200;

/** A probed disk, about to be written. */
interface Pending {
  rec: DiskRecord;
  isNew: boolean;
  /** The stat key of the file as probed. */
  key: string;
}

const addedEvent = (d: DiskRecord): NewEvent => ({ severity: 'info', type: 'disk-added', diskId: d.id, jobId: null, message: `Disk ${d.name} found (${d.format ?? 'unreadable'})` });

/** One pass over the domains this host scans: how long it took, files seen, and how many were new or changed. */
export interface ScanReport {
  startedAt: number;
  finishedAt: number;
  files: number;
  changed: number;
}

export class Scanner {
  private scanning: Promise<void> | undefined;
  /** The last pass that ended, and the one under way. */
  last: ScanReport | null = null;
  private current: ScanReport | undefined;
  private rescanAgain = false;
  private closed = false;
  private readonly analyzer: Analyzer;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly mounts: Mounts,
    /** Is this host the one that scans the domain now? */
    private readonly isScanner: (domainId: string) => Promise<boolean>,
    engine: EnginePool,
  ) {
    this.analyzer = new Analyzer(ctx, mounts, engine);
  }

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
          this.current = { startedAt: Date.now(), finishedAt: 0, files: 0, changed: 0 };
          for (const m of this.mounts.list()) {
            if (this.closed) return;
            if (m.reachable && (await this.isScanner(m.id))) await this.scanDomain(m, this.current);
          }
          this.last = { ...this.current, finishedAt: Date.now() };
        } while (this.rescanAgain && !this.closed);
      } finally {
        this.scanning = undefined;
        this.current = undefined;
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

  /** Whether the scanner is in a pass now. */
  get running(): boolean {
    return this.scanning !== undefined;
  }

  /**
   * One stat per file whose record says it has not changed (and QEMU's lock probe), read against
   * the domain's records loaded once; only new or changed files are probed and written.
   */
  private async scanDomain(m: Mount, report: ScanReport): Promise<void> {
    const files = await this.listFiles(m);
    // The folder went away during the listing: never mistake that for every disk being deleted.
    if ((await this.mounts.check()).some((c) => c.id === m.id) || !m.reachable) return;
    const known = await this.ctx.store.disks.scanIndex(m.id);
    const seen = new Set<string>();
    const links: Array<Pick<DiskRecord, 'id' | 'backingRef' | 'backingId'>> = [];
    const batch: Pending[] = [];
    const flush = async () => {
      for (const d of await this.writeAll(batch.splice(0))) {
        seen.add(d.id);
        links.push(d);
      }
    };
    // The probes below are synchronous: requests get a turn every few ms.
    const slice = new TimeSlice();
    for (const rel of files) {
      if (this.closed) return;
      report.files++;
      await slice.pause();
      const k = known.get(rel);
      const entry = k?.present ? entryAt(join(m.root, rel)) : undefined;
      if (k && entry && this.unchanged(k, entry)) {
        await this.keep(k, entry.key, join(m.root, rel));
        seen.add(k.id);
        links.push(k);
        continue;
      }
      report.changed++;
      const p = await this.probeAt(m, rel);
      if (p && 'kept' in p) {
        seen.add(p.kept.id);
        links.push(p.kept);
      } else if (p) {
        batch.push(p);
        if (batch.length >= WRITE_BATCH) await flush();
      }
    }
    await flush();
    if (this.closed) return;
    for (const k of known.values()) {
      if (!k.present || seen.has(k.id) || k.lockedBy) continue;
      const d = await this.ctx.store.disks.get(k.id);
      if (!d || !d.present || d.lockedBy) continue;
      d.present = false;
      await this.ctx.store.disks.put(d);
      await this.ctx.record({ severity: 'info', type: 'disk-removed', diskId: d.id, jobId: null, message: `Disk ${d.name} is no longer in its storage domain` });
      this.ctx.bus.publish({ type: 'disk-removed', id: d.id });
    }
    await this.linkChains(links);
  }

  /** The file is the version its record describes (a device's discard facts too). */
  private unchanged(d: Pick<ScanEntry, 'present' | 'device'> & { statKey: string }, e: Entry): boolean {
    return d.present && d.statKey === e.key && JSON.stringify(d.device ?? null) === JSON.stringify(e.device);
  }

  /** An unchanged file: only whether a VM holds it may have changed, and its analysis may be due. */
  private async keep(d: Pick<ScanEntry, 'id' | 'inUse' | 'health' | 'analysisKey' | 'device' | 'analyzedAt'>, key: string, full: string): Promise<void> {
    const inUse = heldForWriting(full);
    if (d.inUse !== inUse) {
      d.inUse = inUse;
      await this.ctx.store.disks.setInUse(d.id, inUse);
      this.ctx.bus.publish({ type: 'disk', id: d.id });
    }
    if (d.health === 'ok' && (d.analysisKey !== key || staleDevice(d))) this.queueAnalysis(d.id);
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
    const p = await this.probeAt(m, rel);
    if (!p) return undefined;
    return 'kept' in p ? p.kept : this.write(p);
  }

  /** The file at `rel` as it is now: its record if that is current, else the record to write (none: not a disk). */
  private async probeAt(m: Mount, rel: string): Promise<Pending | { kept: DiskRecord } | undefined> {
    const full = join(m.root, rel);
    const entry = entryAt(full);
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
    // A device's discard facts may change with its stat key unchanged: then it is recorded again.
    if (d && this.unchanged({ ...d, statKey: recordKey(d) }, entry)) {
      await this.keep(d, key, full);
      return { kept: d };
    }
    const inUse = heldForWriting(full);
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
    return { rec, isNew, key };
  }

  /** Write one probed disk; another host's record of the same file, if it was first. */
  private async write(p: Pending): Promise<DiskRecord | undefined> {
    try {
      await this.ctx.store.disks.put(p.rec);
    } catch (e) {
      // Another host recorded this file at the same moment: theirs stands.
      if (isDuplicate(e)) return this.ctx.store.disks.findAt(p.rec.domainId, p.rec.rel);
      throw e;
    }
    if (p.isNew) await this.ctx.record(addedEvent(p.rec));
    this.written(p);
    return p.rec;
  }

  /**
   * Write probed disks and their disk-added events in one transaction. If it fails (another host
   * recorded one of the files first), nothing of it stays and they are written one at a time.
   */
  private async writeAll(batch: Pending[]): Promise<DiskRecord[]> {
    if (!batch.length) return [];
    let events;
    try {
      events = await this.ctx.store.transaction(async (tx) => {
        const out = [];
        for (const p of batch) {
          await tx.disks.put(p.rec);
          if (p.isNew) out.push(await tx.events.add(addedEvent(p.rec), this.ctx.host));
        }
        return out;
      });
    } catch {
      const out: DiskRecord[] = [];
      for (const p of batch) {
        const d = await this.write(p);
        if (d) out.push(d);
      }
      return out;
    }
    for (const ev of events) this.ctx.bus.publish({ type: 'event', id: ev.id });
    for (const p of batch) this.written(p);
    return batch.map((p) => p.rec);
  }

  /** Tell the other parts and hosts, and analyse the disk if its analysis is not of this version. */
  private written(p: Pending): void {
    this.ctx.bus.publish({ type: 'disk', id: p.rec.id });
    if (p.rec.health === 'ok' && p.rec.analysisKey !== p.key) this.queueAnalysis(p.rec.id);
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

  /** Point each disk of a scanned domain at the record of its backing file, when that file is in a domain too. */
  private async linkChains(disks: ReadonlyArray<Pick<DiskRecord, 'id' | 'backingRef' | 'backingId'>>): Promise<void> {
    const found = new Map<string, string | null>();
    for (const d of disks) {
      if (!d.backingRef && !d.backingId) continue;
      let backing: string | null = null;
      if (d.backingRef) {
        const ref = `${d.backingRef.domainId}\u0000${d.backingRef.rel}`;
        if (!found.has(ref)) {
          const b = await this.ctx.store.disks.findAt(d.backingRef.domainId, d.backingRef.rel);
          found.set(ref, b?.present ? b.id : null);
        }
        backing = found.get(ref)!;
      }
      if (backing !== d.backingId) {
        await this.ctx.store.disks.setBacking(d.id, backing);
        this.ctx.bus.publish({ type: 'disk', id: d.id });
      }
    }
  }

  queueAnalysis(id: string): void {
    this.analyzer.queue(id);
  }

  /** Analyse one disk now and store it (a job's disk when the job is done: `forJob`). */
  analyze(id: string, forJob?: string): Promise<void> {
    return this.analyzer.analyze(id, forJob);
  }

  /** Wait until no scan or analysis is queued or running (tests, benchmarks). */
  async idle(): Promise<void> {
    while (this.scanning || this.analyzer.busy) await new Promise((r) => setTimeout(r, 20));
  }

  close(): void {
    this.closed = true;
    this.analyzer.close();
  }
}
