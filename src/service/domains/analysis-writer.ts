/**
 * The scanner's background analyses are stored in batches, one transaction each: a commit per
 * analysis (SQLite's WAL checkpoints, PostgreSQL's fsync) held the analysis of 100,000 disks to
 * some 75 a second. A result waits at most FLUSH_MS. Facts it relies on: a result is stored only
 * if the disk is still the file it was made of (same inode, same stat key as recorded) and no job
 * holds it (its job analyses it again when done), so a batch written late never overwrites a
 * newer analysis.
 */
import type { DiskMapJson } from '../../index.js';
import type { ServiceContext } from '../context.js';
import type { StoredAnalysis } from '../store/disks.js';
import { recordKey } from './stat-key.js';

/** Results written in one transaction. */
const BATCH = 100;
/** How long a result may wait to be written. */
const FLUSH_MS = 250;

export interface AnalysisResult {
  id: string;
  /** The inode the analysis was made of. */
  ino: number;
  /** The file's stat key when it was analysed. */
  key: string;
  stored: StoredAnalysis;
  map: DiskMapJson | null;
}

export class AnalysisWriter {
  private waiting: AnalysisResult[] = [];
  private oldest = 0;

  constructor(private readonly ctx: ServiceContext) {}

  /** Keep a result; the batch is written when it is full or its oldest result has waited FLUSH_MS. */
  async add(r: AnalysisResult): Promise<void> {
    if (!this.waiting.length) this.oldest = Date.now();
    this.waiting.push(r);
    if (this.waiting.length >= BATCH || Date.now() - this.oldest >= FLUSH_MS) await this.flush();
  }

  /** Write what waits, in one transaction; a failure is logged and the results dropped (the next scan queues them again). */
  async flush(): Promise<void> {
    const batch = this.waiting;
    if (!batch.length) return;
    this.waiting = [];
    let stored: string[];
    try {
      stored = await this.ctx.store.transaction(async (tx) => {
        const now = new Map((await tx.disks.getMany(batch.map((r) => r.id))).map((d) => [d.id, d]));
        const out: string[] = [];
        for (const r of batch) {
          const d = now.get(r.id);
          if (!d || d.lockedBy || d.ino !== r.ino || recordKey(d) !== r.key) continue;
          if (await tx.disks.setAnalysis(r.id, r.ino, r.stored, r.map)) out.push(r.id);
        }
        return out;
      });
    } catch (e) {
      this.ctx.log.warn(`${batch.length} analyses not stored: ${(e as Error).message}`);
      return;
    }
    for (const id of stored) this.ctx.bus.publish({ type: 'disk', id });
  }
}
