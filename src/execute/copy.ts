/**
 * Copy executor: read only the kept ranges the image has data for, skip blocks that are all
 * zero, and write the rest through a format writer. Reads run ahead of writes with a bounded
 * number of buffers, so memory stays fixed whatever the image size.
 */
import { Extents, type Range } from '../io/extents.js';
import { SparsifyError } from '../io/errors.js';
import type { DiskImage, ImageWriter } from '../formats/types.js';
import type { Plan } from '../plan/plan.js';
import type { ProgressListener } from './progress.js';
import { nonZeroRuns } from './zero-runs.js';

/** Zero runs at least this long, and aligned to it, become holes (virt-sparsify's 4 KiB). */
export const HOLE_GRANULARITY = 4096;
const CHUNK = 4 << 20;
const READS_IN_FLIGHT = 4;
/** Writes left running while the next chunk is examined, for writers that allow it. */
const WRITES_IN_FLIGHT = 4;

export interface CopyOptions {
  onProgress?: ProgressListener;
  signal?: AbortSignal;
  /** The image's data extents when already known (the analysis has them): saves walking them again. */
  data?: Extents;
  /**
   * For an overlay writer (see plan/overlay.ts): copy exactly these ranges, whole clusters, instead
   * of the kept data. Inside them the plan's discard ranges are written as zeros, and zero runs are
   * written too: a range never written would show the backing file.
   */
  overlayClusters?: Extents;
}

export interface CopyResult {
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes of data written to the destination. */
  bytesWritten: number;
}

/** The ranges to read: kept, and allocated as data in the source (zero and unallocated read as zero). */
export async function rangesToCopy(image: DiskImage, keep: Extents): Promise<Extents> {
  const out: Range[] = [];
  for (const r of keep) {
    for await (const e of image.extents(r.start, r.end)) if (e.kind === 'data') out.push({ start: e.start, end: e.end });
  }
  return new Extents(out);
}

/** Split ranges into chunks of at most CHUNK bytes that do not cross CHUNK-aligned boundaries. */
function* chunks(ranges: Extents): Generator<Range> {
  for (const r of ranges) {
    let pos = r.start;
    while (pos < r.end) {
      const end = Math.min(r.end, (Math.floor(pos / CHUNK) + 1) * CHUNK);
      yield { start: pos, end };
      pos = end;
    }
  }
}

export async function copyImage(image: DiskImage, plan: Plan, writer: ImageWriter, opts: CopyOptions = {}): Promise<CopyResult> {
  const overlay = opts.overlayClusters;
  const toCopy = overlay ?? (opts.data ? plan.keep.intersect(opts.data) : await rangesToCopy(image, plan.keep));
  const total = toCopy.total();
  let done = 0;
  let bytesWritten = 0;
  opts.onProgress?.({ done, total });

  const writesInFlight = writer.concurrentWrites ? WRITES_IN_FLIGHT : 0;
  const pool: Buffer[] = Array.from({ length: READS_IN_FLIGHT + writesInFlight + 1 }, () => Buffer.allocUnsafe(CHUNK));
  const pending: Array<Promise<{ buf: Buffer; range: Range }>> = [];
  const writing: Array<Promise<Buffer>> = [];
  const it = chunks(toCopy);

  const startRead = (): boolean => {
    const next = it.next();
    if (next.done) return false;
    const range = next.value;
    const buf = pool.pop()!;
    const view = buf.subarray(0, range.end - range.start);
    const p = image.read(view, range.start).then(() => ({ buf, range }));
    // Awaited in order later; meanwhile a failure must not count as an unhandled rejection.
    p.catch(() => undefined);
    pending.push(p);
    return true;
  };

  try {
    for (let i = 0; i < READS_IN_FLIGHT && startRead(); i++);
    while (pending.length) {
      const { buf, range } = await pending.shift()!;
      if (opts.signal?.aborted) throw new SparsifyError('quit (^C) at user request');
      const view = buf.subarray(0, range.end - range.start);
      const writes: Array<Promise<void>> = [];
      if (overlay) for (const d of plan.discard.clip(range.start, range.end)) view.fill(0, d.start - range.start, d.end - range.start);
      const runs = overlay ? [[0, view.length] as const] : nonZeroRuns(view, range.start, HOLE_GRANULARITY);
      for (const [s, e] of runs) {
        const w = writer.write(view.subarray(s, e), range.start + s);
        if (writesInFlight) writes.push(w);
        else await w;
        bytesWritten += e - s;
      }
      if (writesInFlight) {
        const w = Promise.all(writes).then(() => buf);
        w.catch(() => undefined);
        writing.push(w);
        // Keep a bounded number of chunks being written; their buffers return to the pool after.
        while (writing.length >= writesInFlight) pool.push(await writing.shift()!);
      } else pool.push(buf);
      done += range.end - range.start;
      opts.onProgress?.({ done, total });
      startRead();
    }
    while (writing.length) pool.push(await writing.shift()!);
  } finally {
    // Let reads and writes already in flight settle before their buffers go away.
    await Promise.allSettled([...pending, ...writing]);
  }
  return { bytesRead: total, bytesWritten };
}
