/**
 * The full analysis of the disks (the DiskMap) in the background, one engine thread task per disk,
 * cached by the file's stat key: the scanner queues a disk whose stored analysis is not of its
 * file's version, a job asks for its disk when done. Facts it relies on: the engine pool runs a
 * task per thread, so ANALYSIS_LANES tasks overlap the engine's reads with the main thread's
 * database work; results are stored in batches (AnalysisWriter) and only if still current.
 */
import type { DiskMapJson } from '../../index.js';
import type { EnginePool } from '../engine/pool.js';
import type { ServiceContext } from '../context.js';
import type { DiskRecord } from '../store/records.js';
import type { Mounts } from './mounts.js';
import { entryAt } from './entry.js';
import { summarize } from './analysis-summary.js';
import { AnalysisWriter, type AnalysisResult } from './analysis-writer.js';

/** Analyses in flight at once: the engine's thread works while the main thread reads and writes. */
const ANALYSIS_LANES = 2;
/** A device's contents change without stat showing it: its analysis is made again when this old (at a scan). */
const DEVICE_ANALYSIS_MAX_AGE_MS = 10 * 60_000;

export const staleDevice = (d: Pick<DiskRecord, 'device' | 'analyzedAt'>): boolean => !!d.device && (d.analyzedAt ?? 0) < Date.now() - DEVICE_ANALYSIS_MAX_AGE_MS;

export class Analyzer {
  /** Disks waiting for analysis, in order (a Set keeps insertion order). */
  private readonly waiting = new Set<string>();
  private draining: Promise<void> | undefined;
  private closed = false;
  private readonly writer: AnalysisWriter;

  constructor(
    private readonly ctx: ServiceContext,
    private readonly mounts: Mounts,
    private readonly engine: EnginePool,
  ) {
    this.writer = new AnalysisWriter(ctx);
  }

  /** Whether analyses are queued, running or not stored yet. */
  get busy(): boolean {
    return this.draining !== undefined || this.waiting.size > 0;
  }

  queue(id: string): void {
    this.waiting.add(id);
    this.draining ??= this.drain().finally(() => (this.draining = undefined));
  }

  /** ANALYSIS_LANES analyses at a time from the queue; what waits to be written is written before this returns. */
  private async drain(): Promise<void> {
    const lane = async () => {
      while (this.waiting.size && !this.closed) {
        const id = this.waiting.values().next().value as string;
        this.waiting.delete(id);
        try {
          const r = await this.analysisOf(id);
          if (r) await this.writer.add(r);
        } catch (e) {
          this.ctx.log.warn(`analysis of disk ${id} not stored: ${(e as Error).message}`);
        }
        // Let requests in between analyses.
        await new Promise((r) => setImmediate(r));
      }
    };
    try {
      await Promise.all(Array.from({ length: ANALYSIS_LANES }, lane));
    } finally {
      await this.writer.flush();
    }
  }

  /**
   * The DiskMap of one disk, stored now with the stat key it was made for. A disk a job holds is
   * left alone (its job re-analyzes it when done) unless `forJob` says this is that job.
   */
  async analyze(id: string, forJob?: string): Promise<void> {
    const r = await this.analysisOf(id, forJob);
    if (r && (await this.ctx.store.disks.setAnalysis(id, r.ino, r.stored, r.map))) this.ctx.bus.publish({ type: 'disk', id });
  }

  /** What analysing the disk now finds, not stored yet; undefined when it is not to be analysed. */
  private async analysisOf(id: string, forJob?: string): Promise<AnalysisResult | undefined> {
    const d = await this.ctx.store.disks.get(id);
    if (!d || !d.present || d.health !== 'ok' || (d.lockedBy && d.lockedBy !== forJob)) return undefined;
    let full: string;
    let key: string;
    try {
      full = this.mounts.pathOf(d);
      const entry = entryAt(full);
      if (!entry) return undefined;
      key = entry.key;
    } catch {
      return undefined;
    }
    if (d.analysisKey === key && !forJob && !staleDevice(d)) return undefined;
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
    return { id, ino: d.ino, key, stored: { analysis: summary, analysisKey: key, analysisError: error, analyzedAt: Date.now() }, map };
  }

  close(): void {
    this.closed = true;
  }
}
