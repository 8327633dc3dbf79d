/**
 * Finds the images in the storage domains and keeps their records fresh: a cheap probe (format,
 * chain, sizes) whenever the file's stat changes, and the full analysis (the DiskMap) in the
 * background, cached by that stat. Disk ids are random UUIDs kept in the store: a renamed file
 * keeps its id (found by inode), and an id only ever leads back to a file inside a domain.
 */
import { randomUUID } from 'node:crypto';
import { lstatSync, readdirSync, realpathSync, mkdirSync, type Stats } from 'node:fs';
import { join, relative, resolve, sep, basename, isAbsolute } from 'node:path';
import { openImage } from '../formats/open.js';
import { analyzeDisk } from '../analyze/analyze.js';
import { toJson } from '../analyze/report.js';
import type { Store, DiskRecord } from './store.js';
import type { Bus } from './bus.js';
import { heldForWriting, hostDataBytes, canPunchHoles } from './host.js';

const MAX_DEPTH = 6;
const MAX_FILES = 20_000;

export interface Domain {
  index: number;
  /** Real path of the folder. */
  root: string;
  canDiscard: boolean;
}

function statKey(st: Stats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.blocks}`;
}

export class Scanner {
  readonly domains: Domain[];
  private scanning: Promise<void> | undefined;
  private rescanAgain = false;
  private readonly analysisQueue: string[] = [];
  private analyzing = false;
  private closed = false;
  /** Disks a job is rewriting: never analyzed meanwhile. */
  readonly busy = new Set<string>();

  constructor(
    private readonly store: Store,
    domainPaths: string[],
    private readonly bus: Bus,
    private readonly log: (s: string) => void,
  ) {
    this.domains = domainPaths.map((p, index) => {
      mkdirSync(p, { recursive: true });
      const root = realpathSync(p);
      return { index, root, canDiscard: canPunchHoles(root) };
    });
  }

  /**
   * The file behind a disk record, checked again on every use: inside its domain, a regular file,
   * not a symlink. Throws otherwise. This is the only way the service turns an id into a path.
   */
  pathOf(d: DiskRecord): string {
    const dom = this.domains[d.domain];
    if (!dom || isAbsolute(d.rel) || d.rel.split(/[\\/]/).includes('..')) throw new Error(`disk ${d.id}: its location is outside the storage domains`);
    const full = resolve(dom.root, d.rel);
    if (!full.startsWith(dom.root + sep)) throw new Error(`disk ${d.id}: its location is outside the storage domains`);
    const st = lstatSync(full);
    if (!st.isFile()) throw new Error(`disk ${d.id}: ${d.rel} is no longer a regular file`);
    return full;
  }

  /** Is the disk open for writing by another process right now? */
  inUse(d: DiskRecord): boolean {
    try {
      return heldForWriting(this.pathOf(d));
    } catch {
      return false;
    }
  }

  /** Rescan every domain; concurrent callers share one scan (and one more if asked meanwhile). */
  scanAll(): Promise<void> {
    if (this.scanning) {
      this.rescanAgain = true;
      return this.scanning;
    }
    this.scanning = (async () => {
      try {
        do {
          this.rescanAgain = false;
          await this.scanOnce();
        } while (this.rescanAgain && !this.closed);
      } finally {
        this.scanning = undefined;
      }
    })();
    return this.scanning;
  }

  private listFiles(dom: Domain): string[] {
    const out: string[] = [];
    const walk = (dir: string, depth: number) => {
      let entries;
      try {
        entries = readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (out.length >= MAX_FILES) return;
        // Hidden files are ours (temporary copies, probes) or not disks.
        if (e.name.startsWith('.')) continue;
        const full = join(dir, e.name);
        if (e.isDirectory() && depth < MAX_DEPTH) walk(full, depth + 1);
        else if (e.isFile()) out.push(relative(dom.root, full));
        // Symlinks are not followed: they could lead out of the domain.
      }
    };
    walk(dom.root, 0);
    return out.sort();
  }

  private async scanOnce(): Promise<void> {
    const seen = new Set<string>();
    for (const dom of this.domains) {
      for (const rel of this.listFiles(dom)) {
        if (this.closed) return;
        const d = await this.refreshAt(dom, rel);
        if (d) seen.add(d.id);
      }
    }
    for (const d of this.store.listDisks()) {
      if (seen.has(d.id) || d.lockedBy) continue;
      d.present = false;
      this.store.putDisk(d);
      const ev = this.store.addEvent({ severity: 'info', type: 'disk-removed', diskId: d.id, jobId: null, message: `Disk ${d.name} is no longer in its storage domain` });
      this.bus.publish({ type: 'disk-removed', data: { id: d.id } });
      this.bus.publish({ type: 'event', data: ev });
    }
    this.linkChains();
  }

  /** Re-read one disk now (after a job, or before validating a request). */
  async refreshDisk(id: string): Promise<DiskRecord | undefined> {
    const d = this.store.getDisk(id);
    if (!d) return undefined;
    const dom = this.domains[d.domain];
    if (!dom) return d;
    const r = await this.refreshAt(dom, d.rel);
    this.linkChains();
    return r ? this.store.getDisk(r.id) : this.store.getDisk(id);
  }

  private async refreshAt(dom: Domain, rel: string): Promise<DiskRecord | undefined> {
    const full = join(dom.root, rel);
    let st: Stats;
    try {
      st = lstatSync(full);
    } catch {
      return undefined;
    }
    if (!st.isFile()) return undefined;
    const key = statKey(st);
    const now = Date.now();
    let d = this.store.findDisk(dom.index, rel);
    if (d && !d.present && (d.dev !== st.dev || d.ino !== st.ino)) d = undefined;
    if (!d) {
      // A file moved within the domains keeps its id.
      const moved = this.store.findDiskByInode(st.dev, st.ino);
      if (moved && (!moved.present || !this.exists(moved))) d = { ...moved, domain: dom.index, rel, name: basename(rel) };
    }
    const isNew = !d;
    if (d && d.present && `${d.dev}:${d.ino}:${d.size}:${d.mtimeMs}:${d.ctimeMs}:${Math.ceil(d.actualSize / 512)}` === key) {
      if (d.health === 'ok' && d.analysisKey !== key) this.queueAnalysis(d.id);
      return d;
    }
    const rec: DiskRecord = d ?? {
      id: randomUUID(),
      domain: dom.index,
      rel,
      name: basename(rel),
      dev: st.dev,
      ino: st.ino,
      size: st.size,
      mtimeMs: st.mtimeMs,
      ctimeMs: st.ctimeMs,
      format: null,
      virtualSize: null,
      actualSize: st.blocks * 512,
      hostDataBytes: 0,
      chain: [],
      backingId: null,
      snapshots: 0,
      health: 'ok',
      error: null,
      allocationOverride: null,
      analysis: null,
      analysisKey: null,
      analysisError: null,
      analyzedAt: null,
      lockedBy: null,
      present: true,
      firstSeen: now,
      lastSeen: now,
    };
    Object.assign(rec, { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, actualSize: st.blocks * 512, present: true, lastSeen: now });
    await this.probe(rec, full);
    this.store.putDisk(rec);
    if (isNew) {
      const ev = this.store.addEvent({ severity: 'info', type: 'disk-added', diskId: rec.id, jobId: null, message: `Disk ${rec.name} found (${rec.format ?? 'unreadable'})` });
      this.bus.publish({ type: 'event', data: ev });
    }
    this.bus.publish({ type: 'disk', data: { id: rec.id } });
    if (rec.health === 'ok' && rec.analysisKey !== key) this.queueAnalysis(rec.id);
    return rec;
  }

  private exists(d: DiskRecord): boolean {
    try {
      this.pathOf(d);
      return true;
    } catch {
      return false;
    }
  }

  /** Format, sizes and chain: what the engine says when it opens the image (no locks taken). */
  private async probe(rec: DiskRecord, full: string): Promise<void> {
    try {
      rec.hostDataBytes = hostDataBytes(full);
    } catch {
      rec.hostDataBytes = rec.actualSize;
    }
    try {
      const image = await openImage(full, { lock: 'none' });
      try {
        rec.format = image.format;
        rec.virtualSize = image.virtualSize;
        const layers = image.layers();
        rec.chain = layers.map((l) => {
          try {
            return realpathSync(l.path);
          } catch {
            return l.path;
          }
        });
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
      rec.chain = [];
      if (wasOk || rec.analysisKey === null) {
        const ev = this.store.addEvent({ severity: 'warning', type: 'disk-illegal', diskId: rec.id, jobId: null, message: `Disk ${rec.name} cannot be read: ${rec.error}` });
        this.bus.publish({ type: 'event', data: ev });
      }
      rec.analysisKey = null;
    }
  }

  /** Point each disk at the disk record of its backing file, when that file is in a domain too. */
  private linkChains(): void {
    const disks = this.store.listDisks();
    const byPath = new Map<string, string>();
    for (const d of disks) {
      const dom = this.domains[d.domain];
      if (dom) byPath.set(join(dom.root, d.rel), d.id);
    }
    for (const d of disks) {
      const backing = d.chain.length > 1 ? (byPath.get(d.chain[1]!) ?? null) : null;
      if (backing !== d.backingId) {
        d.backingId = backing;
        this.store.putDisk(d);
      }
    }
  }

  queueAnalysis(id: string): void {
    if (!this.analysisQueue.includes(id)) this.analysisQueue.push(id);
    if (!this.analyzing) void this.drainAnalysis();
  }

  private async drainAnalysis(): Promise<void> {
    this.analyzing = true;
    try {
      while (this.analysisQueue.length && !this.closed) {
        const id = this.analysisQueue.shift()!;
        if (this.busy.has(id)) continue;
        await this.analyze(id);
        // Let requests in between analyses.
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.analyzing = false;
    }
  }

  /** The DiskMap, as JSON, cached under the stat key it was made for. */
  private async analyze(id: string): Promise<void> {
    const d = this.store.getDisk(id);
    if (!d || !d.present || d.health !== 'ok') return;
    let full: string;
    let key: string;
    try {
      full = this.pathOf(d);
      key = statKey(lstatSync(full));
    } catch {
      return;
    }
    if (d.analysisKey === key) return;
    const warnings: string[] = [];
    try {
      const image = await openImage(full, { lock: 'none', format: d.format ?? undefined, warn: (w) => warnings.push(w) });
      try {
        const map = await analyzeDisk(image);
        d.analysis = toJson(map);
        d.analysisError = null;
      } finally {
        await image.close();
      }
    } catch (e) {
      d.analysis = null;
      d.analysisError = (e as Error).message;
      this.log(`analysis of ${d.name} failed: ${d.analysisError}`);
    }
    // The file may have changed meanwhile: store under the key it had before, so a change is seen again.
    const fresh = this.store.getDisk(id);
    if (!fresh || fresh.ino !== d.ino) return;
    fresh.analysis = d.analysis;
    fresh.analysisError = d.analysisError;
    fresh.analysisKey = key;
    fresh.analyzedAt = Date.now();
    this.store.putDisk(fresh);
    this.bus.publish({ type: 'disk', data: { id } });
  }

  /** Wait until no analysis is queued or running (tests, benchmarks). */
  async idle(): Promise<void> {
    while (this.scanning || this.analyzing || this.analysisQueue.length) await new Promise((r) => setTimeout(r, 20));
  }

  close(): void {
    this.closed = true;
  }
}
