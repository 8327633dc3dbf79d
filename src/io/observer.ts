/**
 * Observers of the changes made through writable files: every write, hole punch, device discard,
 * truncate and sync, in the order they are issued. Nothing in the product listens; the power-cut
 * tests do, to replay the states a crash could leave after each fsync (test/crash/). With no
 * observer the cost is one boolean test per operation.
 */

export type IoOp =
  | { kind: 'write'; offset: number; data: Buffer }
  /** fallocate(PUNCH_HOLE): reads as zero afterwards. */
  | { kind: 'punch'; offset: number; length: number }
  /** BLKDISCARD: the device may return anything there afterwards. */
  | { kind: 'discard'; offset: number; length: number }
  | { kind: 'truncate'; size: number }
  /** fdatasync: everything issued before it is durable. */
  | { kind: 'sync' };

export type IoObserver = (path: string, op: IoOp) => void;

const observers = new Set<IoObserver>();

/** Start observing; returns the function that stops. */
export function observeIo(observer: IoObserver): () => void {
  observers.add(observer);
  return () => observers.delete(observer);
}

export function observing(): boolean {
  return observers.size > 0;
}

export function notifyIo(path: string, op: IoOp): void {
  for (const o of observers) o(path, op);
}
