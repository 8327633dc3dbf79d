/**
 * Long synchronous loops (lstat and lock probes, SQLite reads) give the event loop back by time,
 * not by count: a count that is cheap on one machine holds requests for tens of ms on a loaded
 * one. performance.now() is monotonic and costs well under a microsecond.
 */

/** How long a slice of synchronous work may hold the event loop before requests get a turn. */
export const SLICE_MS = 5;

export class TimeSlice {
  private started = performance.now();

  constructor(private readonly ms = SLICE_MS) {}

  /** A turn of the event loop when this slice has run its time; at once otherwise. */
  async pause(): Promise<void> {
    if (performance.now() - this.started < this.ms) return;
    await new Promise((r) => setImmediate(r));
    this.started = performance.now();
  }
}
