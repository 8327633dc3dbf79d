/**
 * Paces the write-back of a file being written front to back through the page cache, so that the
 * data reaches the device while the copy is still reading, and the final fdatasync has little left:
 * - each write starts the kernel's write-back of its range at once (sync_file_range), without
 *   waiting for it;
 * - every SYNC_STEP bytes, an fdatasync runs in the background (one at a time; the writes go on
 *   meanwhile). On a virtual disk with a write-back cache, the host flushes its cache only when the
 *   guest asks: left to the end, that flush of everything written was a second or more of waiting
 *   (2 GiB written at 1.2 GB/s, then fdatasync: 2.3 s in all with the flushes spread, 3.4-4.7 s
 *   without).
 *
 * A background fdatasync that fails is not forgotten: Linux reports a write-back error to one
 * fsync per open file, so the final one could succeed after it. `settle` throws it.
 */
import { startWriteback } from './syscalls.js';
import { observing } from './observer.js';

/** Bytes written between two background fdatasyncs. */
export const SYNC_STEP = 64 << 20;

export class WriteBack {
  private sinceSync = 0;
  private syncing: Promise<void> | undefined;
  private failure: unknown;

  constructor(
    private readonly fd: number,
    /** fdatasync of the file (its owner's, so that I/O observers see it). */
    private readonly sync: () => Promise<void>,
  ) {}

  /** [offset, offset + length) was just written. */
  written(offset: number, length: number): void {
    startWriteback(this.fd, offset, length);
    this.sinceSync += length;
    // While I/O observers record (power-cut tests), the syncs a writer makes are its own: none added.
    if (this.sinceSync < SYNC_STEP || this.syncing || observing()) return;
    this.sinceSync = 0;
    this.syncing = this.sync()
      .catch((e: unknown) => void (this.failure ??= e))
      .finally(() => (this.syncing = undefined));
  }

  /** Wait for a background fdatasync still running; throw the first that failed. */
  async settle(): Promise<void> {
    await this.syncing;
    if (this.failure !== undefined) throw this.failure;
  }
}
