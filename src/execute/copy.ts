/**
 * Copy executor: read only the kept ranges the image has data for, skip blocks that are all
 * zero, and write the rest through a format writer. Reads run ahead of writes with a bounded
 * number of buffers, so memory stays fixed whatever the image size.
 *
 * Where the host allows it, bytes skip user space (see io/transfer.ts):
 * - clone: kept data that lies as it is in a host file on a reflink filesystem is shared with the
 *   output, never read (so zero blocks inside kept data are shared too, not made holes);
 * - copy: data is still read to find the zero blocks, but the kernel copies the others.
 */
import { Extents, type Range } from '../io/extents.js';
import { SparsifyError } from '../io/errors.js';
import type { DiskImage, HostRun, ImageWriter, TransferSupport } from '../formats/types.js';
import type { Plan } from '../plan/plan.js';
import type { ProgressListener } from './progress.js';
import { isZero } from './zero-runs.js';
import { NbdRawWriter } from './nbd-writer.js';

/** Zero runs at least this long, and aligned to it, become holes (virt-sparsify's 4 KiB). */
export const HOLE_GRANULARITY = 4096;
const CHUNK = 4 << 20;
/** Largest single clone: big enough for few system calls, small enough for progress to move. */
const CLONE_CHUNK = 256 << 20;
const READS_IN_FLIGHT = 4;
/** Shorter runs are written from the buffer they were read into: a kernel copy would cost more. */
const MIN_KERNEL_COPY = 64 << 10;
/** Writes left running while the next chunk is examined, for writers that allow it. */
const WRITES_IN_FLIGHT = 4;

export interface CopyOptions {
  onProgress?: ProgressListener;
  signal?: AbortSignal;
  /** The image's data extents when already known (the analysis has them): saves walking them again. */
  data?: Extents;
  /** Never clone or copy in the kernel (tests compare both paths). */
  noTransfer?: boolean;
  /**
   * For an overlay writer (see plan/overlay.ts): copy exactly these ranges, whole clusters, instead
   * of the kept data. Inside them the plan's discard ranges are written as zeros, and zero runs are
   * written too: a range never written would show the backing file.
   */
  overlayClusters?: Extents;
  /**
   * Called once before anything is written, with the most bytes the copy will write and whether
   * they will be shared with the source instead (reflinks take no new space): it throws to refuse.
   */
  checkSpace?: (bytes: number, shared: boolean) => Promise<void>;
}

export interface CopyResult {
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes of data placed in the destination (written, copied or shared). */
  bytesWritten: number;
  /** Of those, bytes shared with the source (reflinks) and copied by the kernel. */
  bytesCloned: number;
  bytesCopied: number;
}

/**
 * The runs of `view` (at disk offset `offset`) holding non-zero data, block by block as
 * zero-runs.ts's nonZeroRuns finds them (the same runs), but a block whose first 8 bytes are not
 * zero is known to hold data without a scan or a Buffer view: on the usual mostly-data chunk this
 * is several times cheaper (a 4 MiB chunk has 1024 blocks).
 */
export function* dataRuns(view: Buffer, offset: number, block: number): Generator<[number, number]> {
  if (isZero(view)) return;
  let runStart = -1;
  for (let pos = 0; pos < view.length; ) {
    const next = Math.min(view.length, (Math.floor((offset + pos) / block) + 1) * block - offset);
    const data = (next - pos >= 8 && (view.readUInt32LE(pos) !== 0 || view.readUInt32LE(pos + 4) !== 0)) || !isZero(view.subarray(pos, next));
    if (data && runStart < 0) runStart = pos;
    if (!data && runStart >= 0) {
      yield [runStart, pos];
      runStart = -1;
    }
    pos = next;
  }
  if (runStart >= 0) yield [runStart, view.length];
}

/** The ranges to read: kept, and allocated as data in the source (zero and unallocated read as zero). */
export async function rangesToCopy(image: DiskImage, keep: Extents): Promise<Extents> {
  const out: Range[] = [];
  for (const r of keep) {
    for await (const e of image.extents(r.start, r.end)) if (e.kind === 'data') out.push({ start: e.start, end: e.end });
  }
  return new Extents(out);
}

/** A piece of the work: bytes to read (and maybe copy in the kernel from `host`), or to clone from `host`. */
interface Piece extends Range {
  host?: HostRun;
  clone: boolean;
}

/** Split [start, end) into pieces of at most `size` bytes that do not cross `size`-aligned boundaries. */
function* split(start: number, end: number, size: number, host: HostRun | undefined, clone: boolean): Generator<Piece> {
  let pos = start;
  while (pos < end) {
    const e = Math.min(end, (Math.floor(pos / size) + 1) * size);
    yield { start: pos, end: e, host, clone };
    pos = e;
  }
}

/** The work in ascending order: host runs (when the writer can take them) and the reads around them. */
async function* pieces(image: DiskImage, ranges: Extents, t: TransferSupport): AsyncGenerator<Piece> {
  for (const r of ranges) {
    if (!image.hostRuns || (!t.clone && !t.copy)) {
      yield* split(r.start, r.end, CHUNK, undefined, false);
      continue;
    }
    let pos = r.start;
    for await (const h of image.hostRuns(r.start, r.end)) {
      yield* split(pos, h.start, CHUNK, undefined, false);
      const a = t.cloneAlignment;
      const sameAlignment = t.clone && (h.fileOffset - h.start) % a === 0;
      const body0 = sameAlignment ? Math.ceil(h.start / a) * a : h.end;
      const body1 = sameAlignment ? Math.max(body0, Math.floor(h.end / a) * a) : h.end;
      yield* split(h.start, body0, CHUNK, h, false);
      yield* split(body0, body1, CLONE_CHUNK, h, true);
      yield* split(body1, h.end, CHUNK, h, false);
      pos = h.end;
    }
    yield* split(pos, r.end, CHUNK, undefined, false);
  }
}

/** Where a piece is read in a pool buffer. */
function viewOf(buf: Buffer, r: Range): Buffer {
  return buf.subarray(0, r.end - r.start);
}

/** Where bytes [start, end) of a piece lie in its host file. */
function fileOffset(host: HostRun, start: number): number {
  return host.fileOffset + (start - host.start);
}

export async function copyImage(image: DiskImage, plan: Plan, writer: ImageWriter, opts: CopyOptions = {}): Promise<CopyResult> {
  const overlay = opts.overlayClusters;
  const toCopy = overlay ?? (opts.data ? plan.keep.intersect(opts.data) : await rangesToCopy(image, plan.keep));
  const total = toCopy.total();
  const result: CopyResult = { bytesRead: 0, bytesWritten: 0, bytesCloned: 0, bytesCopied: 0 };
  let done = 0;
  opts.onProgress?.({ done, total });

  const transfer = await transferSupport(image, writer, toCopy, opts);
  await opts.checkSpace?.(total, transfer.clone);
  // From an NBD export into a local raw file, writes go one at a time: there is no kernel copy to
  // overlap, and several buffered writes into one file only contend for its lock (measured: a raw
  // output took 40% more system time and 1.5x the wall time with 4 in flight). The qcow2 writer
  // writes one at a time whatever comes, so chunks given to it wait without stopping the reads.
  const oneRawFileFromRemote = writer.format === 'raw' && !(writer instanceof NbdRawWriter) && (await remoteSource(image, toCopy));
  const writesInFlight = writer.concurrentWrites && !oneRawFileFromRemote ? WRITES_IN_FLIGHT : 0;
  const pool: Buffer[] = Array.from({ length: READS_IN_FLIGHT + writesInFlight + 1 }, () => Buffer.allocUnsafe(CHUNK));
  const pending: Array<Promise<{ piece: Piece; buf?: Buffer }>> = [];
  const writing: Array<Promise<Buffer>> = [];
  const it = pieces(image, toCopy, transfer);

  const startNext = async (): Promise<boolean> => {
    const next = await it.next();
    if (next.done) return false;
    const piece = next.value;
    if (piece.clone) {
      pending.push(Promise.resolve({ piece }));
      return true;
    }
    const buf = pool.pop()!;
    const p = image.read(viewOf(buf, piece), piece.start).then(() => ({ piece, buf }));
    // Awaited in order later; meanwhile a failure must not count as an unhandled rejection.
    p.catch(() => undefined);
    pending.push(p);
    return true;
  };

  /** Place the non-zero runs of a piece that was read (all of an overlay's); long ones by kernel copy where possible. */
  const place = async (piece: Piece, view: Buffer): Promise<Array<Promise<void>>> => {
    const writes: Array<Promise<void>> = [];
    if (overlay) for (const d of plan.discard.clip(piece.start, piece.end)) view.fill(0, d.start - piece.start, d.end - piece.start);
    const runs = overlay ? [[0, view.length] as const] : dataRuns(view, piece.start, HOLE_GRANULARITY);
    for (const [s, e] of runs) {
      const at = piece.start + s;
      const bytes = view.subarray(s, e);
      let w: Promise<void>;
      if (piece.host && transfer.copy && bytes.length >= MIN_KERNEL_COPY) {
        const host = piece.host;
        // The bytes stay in their buffer until this settles, so a refusal can still write them.
        w = writer.transfer!(host.file, fileOffset(host, at), at, bytes.length, 'copy').then((ok) => {
          if (ok) result.bytesCopied += bytes.length;
          else {
            transfer.copy = false;
            return writer.write(bytes, at);
          }
        });
      } else w = writer.write(bytes, at);
      if (writesInFlight) {
        w.catch(() => undefined);
        writes.push(w);
      } else await w;
      result.bytesWritten += bytes.length;
    }
    return writes;
  };

  /** Clone a piece; if the host refuses after all, read and write it instead. */
  const clone = async (piece: Piece): Promise<void> => {
    const len = piece.end - piece.start;
    if (transfer.clone && (await writer.transfer!(piece.host!.file, fileOffset(piece.host!, piece.start), piece.start, len, 'clone'))) {
      result.bytesCloned += len;
      result.bytesWritten += len;
      return;
    }
    transfer.clone = false;
    // Every read in flight holds at most one buffer, so at least one is free here.
    const buf = pool.pop()!;
    try {
      for (const sub of split(piece.start, piece.end, CHUNK, undefined, false)) {
        const view = viewOf(buf, sub);
        await image.read(view, sub.start);
        result.bytesRead += view.length;
        await Promise.all(await place(sub, view));
      }
    } finally {
      pool.push(buf);
    }
  };

  try {
    for (let i = 0; i < READS_IN_FLIGHT && (await startNext()); i++);
    while (pending.length) {
      const { piece, buf } = await pending.shift()!;
      if (opts.signal?.aborted) throw new SparsifyError('quit (^C) at user request');
      if (!buf) await clone(piece);
      else {
        const view = viewOf(buf, piece);
        result.bytesRead += view.length;
        const writes = await place(piece, view);
        if (writesInFlight) {
          const w = Promise.all(writes).then(() => buf);
          w.catch(() => undefined);
          writing.push(w);
          // Keep a bounded number of chunks being written; their buffers return to the pool after.
          while (writing.length >= writesInFlight) pool.push(await writing.shift()!);
        } else pool.push(buf);
      }
      done += piece.end - piece.start;
      opts.onProgress?.({ done, total });
      await startNext();
    }
    while (writing.length) pool.push(await writing.shift()!);
  } finally {
    // Let reads and writes already in flight settle before their buffers go away.
    await Promise.allSettled([...pending, ...writing]);
  }
  return result;
}

/** Is the image served by a remote peer (NBD), judged by the host file of its first data to copy? */
async function remoteSource(image: DiskImage, toCopy: Extents): Promise<boolean> {
  if (!image.hostRuns) return false;
  for (const r of toCopy) {
    for await (const h of image.hostRuns(r.start, r.end)) return h.file.isRemote;
  }
  return false;
}

/** What the writer can take straight from the image's host files, probed with the first data run. */
async function transferSupport(image: DiskImage, writer: ImageWriter, toCopy: Extents, opts: CopyOptions): Promise<TransferSupport> {
  const none: TransferSupport = { clone: false, cloneAlignment: 1, copy: false };
  // An overlay's clusters carry the plan's zeros, written from memory.
  if (opts.noTransfer || opts.overlayClusters || !image.hostRuns || !writer.transferSupport || !writer.transfer || toCopy.isEmpty) return none;
  for (const r of toCopy) {
    for await (const h of image.hostRuns(r.start, r.end)) return writer.transferSupport(h.file, h.fileOffset);
  }
  return none;
}

