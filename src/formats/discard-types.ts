/**
 * The in-place contract, kept beside the format drivers that implement it: what the in-place
 * executor asks of a storage backend (a raw file, a block device, an image format): its discard
 * granularity, a harmless check of how freed space can go back to the host, the discard itself,
 * done in units that each leave the image consistent, and, for formats that map their data,
 * compaction: moving what is kept into the freed slots lower down and shortening the file.
 *
 * Two ways space goes back to the host:
 * - release: holes punched in a file, BLKDISCARD on a device (`BlockFile.release`). Storage that
 *   cannot (NFS before 4.2, FUSE, a device without discard) gives nothing back this way.
 * - compaction: the image's own end moves down; a file is truncated, and on a block device the
 *   new end is reported so the volume can be reduced to it. Works on any storage.
 */
import type { Extents } from '../io/extents.js';
import { SparsifyError } from '../io/errors.js';

export interface DiscardContext {
  /** Called with the bytes of the (aligned) plan processed so far. */
  onProgress(done: number): void;
  /** Checked between consistent units; when aborted the backend stops and returns. */
  signal?: AbortSignal;
  warn(msg: string): void;
  /**
   * The ranges of --zero devices: they must read as zero afterwards. The rest is free in the guest,
   * so a backing file's data that already shows through there may stay as it is.
   */
  zero?: Extents;
  /**
   * Give freed host space back by releasing it (punch, BLKDISCARD). False when the storage cannot,
   * or when compaction follows and gives the space back itself: the maps still change, so the
   * freed slots are free for compaction and for the guest's next writes.
   */
  release: boolean;
}

export interface DiscardResult {
  /** Virtual bytes now unallocated or reading as zero. */
  discarded: number;
  /** Virtual bytes of the plan left as they were (a reason was warned). */
  kept: number;
  /** True when the run stopped early because the signal was aborted. */
  aborted: boolean;
}

export interface CompactContext {
  /** Bytes moved so far of the bytes the plan moves. */
  onProgress?(done: number, total: number): void;
  signal?: AbortSignal;
  warn(msg: string): void;
  /** Release the free space left below the new end (the storage can: see `DiscardContext.release`). */
  release: boolean;
  /** Guest ranges of --zero devices, as for the discard (a format may need them when it moves data). */
  zero?: Extents;
}

export interface CompactResult {
  /** Where the image ended before and after, in bytes: the file length, or on a block device the end of the last used byte. */
  endBefore: number;
  endAfter: number;
  /** Bytes of data and metadata moved to lower offsets. */
  moved: number;
  /** The file was shortened to `endAfter` (false on a block device, which keeps its size). */
  truncated: boolean;
  /** Host bytes the truncation itself released (allocation measured just before and after it). */
  releasedByTruncation: number;
  /** True when the run stopped early because the signal was aborted (the image is consistent). */
  aborted: boolean;
}

/** A format that can compact: move what lies past the new end into free slots below it, then shorten. */
export interface Compactor {
  /**
   * The format cannot be left without compacting after a discard (VDI: new blocks go at
   * `blocks_allocated`, so the used slots must stay dense): compaction runs whatever is asked.
   */
  readonly required?: boolean;
  /** Where the image would end if compacted now (after the discard), in bytes; changes nothing. */
  plannedEnd(): Promise<number>;
  compact(ctx: CompactContext): Promise<CompactResult>;
}

export interface DiscardBackend {
  /** Short description for trace lines: "raw file (4096-byte blocks)". */
  readonly description: string;
  /** The virtual ranges this backend can really discard, from the plan's ranges. */
  align(ranges: Extents): Extents;
  /**
   * The unit it discards in (cluster, block, grain), when it has one: compaction then also
   * discards the units that read as zero, as `qemu-img convert` leaves them out.
   */
  readonly granularity?: number;
  /**
   * Check, changing nothing, whether freed space can be released to the host (holes, BLKDISCARD).
   * Resolves false when the storage cannot; throws for a real I/O failure.
   */
  canRelease(): Promise<boolean>;
  discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult>;
  /** Write zeros over small ranges discard could not cover (the unaligned edges of --zero devices). */
  writeZeros?(ranges: Extents): Promise<void>;
  /** Present for formats whose host space can be compacted. */
  readonly compactor?: Compactor;
}

/** virt-sparsify's message and exit code 3 for storage that cannot discard. */
export function discardUnsupported(detail: string): SparsifyError {
  return new SparsifyError(`discard/trim is not supported: ${detail}`, 3);
}

/** errno names meaning "this storage cannot do that", as opposed to a real I/O failure. */
export const UNSUPPORTED_ERRNOS = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'ENOTTY', 'EINVAL']);

/** Let the event loop run (signals, progress output) during long synchronous syscall loops. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
