/**
 * The discard contract, kept beside the format drivers that implement it: what the in-place
 * executor asks of a storage backend (a raw file, a block device, a qcow2 or vdi image): its
 * discard granularity, a harmless check that discard works, and the discard itself, done in units
 * that each leave the image consistent.
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
}

export interface DiscardResult {
  /** Virtual bytes now unallocated or reading as zero. */
  discarded: number;
  /** Virtual bytes of the plan left as they were (a reason was warned). */
  kept: number;
  /** True when the run stopped early because the signal was aborted. */
  aborted: boolean;
}

export interface DiscardBackend {
  /** Short description for trace lines: "raw file (4096-byte blocks)". */
  readonly description: string;
  /** The virtual ranges this backend can really discard, from the plan's ranges. */
  align(ranges: Extents): Extents;
  /** Check that discarding works, changing nothing; throws `discardUnsupported` when it does not. */
  probe(): Promise<void>;
  discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult>;
  /** Write zeros over small ranges discard could not cover (the unaligned edges of --zero devices). */
  writeZeros?(ranges: Extents): Promise<void>;
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
