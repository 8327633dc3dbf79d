/**
 * A sorted, disjoint set of half-open byte ranges [start, end).
 *
 * Offsets are JavaScript numbers: exact up to 2^53 bytes (8 PiB), far past any disk image.
 * Every set operation is linear in the number of ranges.
 */
export interface Range {
  readonly start: number;
  readonly end: number;
}

export class Extents implements Iterable<Range> {
  private readonly ranges: Range[];

  /** Build from ranges in any order, possibly overlapping or touching; empty ranges are dropped. */
  constructor(ranges: Iterable<Range> = []) {
    const sorted = [...ranges].filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
    this.ranges = Extents.coalesceSorted(sorted);
  }

  static of(start: number, end: number): Extents {
    return new Extents([{ start, end }]);
  }

  /** Wrap ranges the caller guarantees are already sorted, disjoint and non-touching. */
  private static trusted(ranges: Range[]): Extents {
    const e = Object.create(Extents.prototype) as Extents;
    (e as unknown as { ranges: Range[] }).ranges = ranges;
    return e;
  }

  private static coalesceSorted(sorted: readonly Range[]): Range[] {
    const out: Range[] = [];
    for (const r of sorted) {
      const last = out[out.length - 1];
      if (last && r.start <= last.end) {
        if (r.end > last.end) out[out.length - 1] = { start: last.start, end: r.end };
      } else {
        out.push({ start: r.start, end: r.end });
      }
    }
    return out;
  }

  [Symbol.iterator](): Iterator<Range> {
    return this.ranges[Symbol.iterator]();
  }

  get count(): number {
    return this.ranges.length;
  }

  get isEmpty(): boolean {
    return this.ranges.length === 0;
  }

  toArray(): Range[] {
    return this.ranges.slice();
  }

  /** Sum of the lengths of all ranges. */
  total(): number {
    let t = 0;
    for (const r of this.ranges) t += r.end - r.start;
    return t;
  }

  union(other: Extents): Extents {
    const merged: Range[] = [];
    let i = 0;
    let j = 0;
    const a = this.ranges;
    const b = other.ranges;
    while (i < a.length || j < b.length) {
      if (j >= b.length || (i < a.length && a[i]!.start <= b[j]!.start)) merged.push(a[i++]!);
      else merged.push(b[j++]!);
    }
    return Extents.trusted(Extents.coalesceSorted(merged));
  }

  intersect(other: Extents): Extents {
    const out: Range[] = [];
    let i = 0;
    let j = 0;
    const a = this.ranges;
    const b = other.ranges;
    while (i < a.length && j < b.length) {
      const s = Math.max(a[i]!.start, b[j]!.start);
      const e = Math.min(a[i]!.end, b[j]!.end);
      if (s < e) out.push({ start: s, end: e });
      if (a[i]!.end < b[j]!.end) i++;
      else j++;
    }
    return Extents.trusted(out);
  }

  subtract(other: Extents): Extents {
    const out: Range[] = [];
    const b = other.ranges;
    let j = 0;
    for (const r of this.ranges) {
      let start = r.start;
      while (j < b.length && b[j]!.end <= start) j++;
      let k = j;
      while (k < b.length && b[k]!.start < r.end) {
        if (b[k]!.start > start) out.push({ start, end: b[k]!.start });
        start = Math.max(start, b[k]!.end);
        if (start >= r.end) break;
        k++;
      }
      if (start < r.end) out.push({ start, end: r.end });
    }
    return Extents.trusted(out);
  }

  /** The complement within [start, end). */
  complement(start: number, end: number): Extents {
    return Extents.of(start, end).subtract(this);
  }

  /** Shrink every range inward to multiples of `granularity` (relative to `origin`), dropping what vanishes. */
  alignInward(granularity: number, origin = 0): Extents {
    if (granularity <= 1) return this;
    const out: Range[] = [];
    for (const r of this.ranges) {
      const s = origin + Math.ceil((r.start - origin) / granularity) * granularity;
      const e = origin + Math.floor((r.end - origin) / granularity) * granularity;
      if (s < e) out.push({ start: s, end: e });
    }
    return Extents.trusted(out);
  }

  /** Grow every range outward to multiples of `granularity` (relative to `origin`), merging what then touches. */
  alignOutward(granularity: number, origin = 0): Extents {
    if (granularity <= 1) return this;
    return new Extents(
      this.ranges.map((r) => ({
        start: origin + Math.floor((r.start - origin) / granularity) * granularity,
        end: origin + Math.ceil((r.end - origin) / granularity) * granularity,
      })),
    );
  }

  /** Shift every range by `delta`. */
  shift(delta: number): Extents {
    return Extents.trusted(this.ranges.map((r) => ({ start: r.start + delta, end: r.end + delta })));
  }

  /** Clip to [start, end). */
  clip(start: number, end: number): Extents {
    return this.intersect(Extents.of(start, end));
  }

  contains(offset: number): boolean {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid]!;
      if (offset < r.start) hi = mid - 1;
      else if (offset >= r.end) lo = mid + 1;
      else return true;
    }
    return false;
  }
}

/**
 * Accumulates ranges that arrive in ascending order (as a bitmap scan produces them),
 * merging touching ones without sorting.
 */
export class ExtentsBuilder {
  private readonly ranges: Range[] = [];
  private curStart = -1;
  private curEnd = -1;

  add(start: number, end: number): void {
    if (end <= start) return;
    if (this.curStart >= 0 && start <= this.curEnd) {
      if (start < this.curStart) throw new Error('ExtentsBuilder: ranges must arrive in ascending order');
      if (end > this.curEnd) this.curEnd = end;
      return;
    }
    if (this.curStart >= 0) {
      if (start < this.curEnd) throw new Error('ExtentsBuilder: ranges must arrive in ascending order');
      this.ranges.push({ start: this.curStart, end: this.curEnd });
    }
    this.curStart = start;
    this.curEnd = end;
  }

  build(): Extents {
    if (this.curStart >= 0) this.ranges.push({ start: this.curStart, end: this.curEnd });
    this.curStart = -1;
    return new Extents(this.ranges);
  }
}
