/**
 * A sorted, disjoint set of half-open byte ranges [start, end).
 *
 * Offsets are JavaScript numbers: exact up to 2^53 bytes (8 PiB), far past any disk image.
 * Every set operation is linear in the number of ranges. Ranges are stored as pairs in one
 * Float64Array (16 bytes a range): a filesystem with free space in millions of pieces must still
 * fit in a few tens of MiB, whatever copies the pipeline makes.
 */
export interface Range {
  readonly start: number;
  readonly end: number;
}

/** A growing list of ranges, merged as they arrive; the caller adds them in ascending order. */
class PairList {
  buf: Float64Array;
  n = 0;

  constructor(capacity = 16) {
    this.buf = new Float64Array(Math.max(2, capacity * 2));
  }

  /** Append [s, e); merges with the last range when they overlap or touch. Empty ranges are dropped. */
  push(s: number, e: number): void {
    if (e <= s) return;
    const n = this.n;
    if (n > 0 && s <= this.buf[2 * n - 1]!) {
      if (e > this.buf[2 * n - 1]!) this.buf[2 * n - 1] = e;
      return;
    }
    if (2 * n + 2 > this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[2 * n] = s;
    this.buf[2 * n + 1] = e;
    this.n = n + 1;
  }

  /** The set, with the storage trimmed to size. */
  done(): Extents {
    return Extents.fromPairs(this.buf.length === 2 * this.n ? this.buf : this.buf.slice(0, 2 * this.n), this.n);
  }
}

export class Extents implements Iterable<Range> {
  /** [start0, end0, start1, end1, ...], sorted, disjoint and not touching. */
  private readonly pairs: Float64Array;
  private readonly n: number;

  /** Build from ranges in any order, possibly overlapping or touching; empty ranges are dropped. */
  constructor(ranges: Iterable<Range> = []) {
    const list = Array.isArray(ranges) ? (ranges as Range[]) : [...ranges];
    let sorted = true;
    for (let i = 1; i < list.length && sorted; i++) if (list[i]!.start < list[i - 1]!.start) sorted = false;
    const order = sorted ? list : [...list].sort((a, b) => a.start - b.start);
    const out = new PairList(order.length);
    for (const r of order) out.push(r.start, r.end);
    this.pairs = out.buf.length === 2 * out.n ? out.buf : out.buf.slice(0, 2 * out.n);
    this.n = out.n;
  }

  /** Build from [start0, end0, start1, end1, ...] in any order: no object per range. */
  static fromFlat(flat: readonly number[]): Extents {
    const n = flat.length >> 1;
    let sorted = true;
    for (let i = 1; i < n && sorted; i++) if (flat[2 * i]! < flat[2 * i - 2]!) sorted = false;
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    if (!sorted) order.sort((a, b) => flat[2 * a]! - flat[2 * b]!);
    const out = new PairList(n);
    for (let k = 0; k < n; k++) out.push(flat[2 * order[k]!]!, flat[2 * order[k]! + 1]!);
    return out.done();
  }

  static of(start: number, end: number): Extents {
    return new Extents([{ start, end }]);
  }

  /** Wrap pairs the caller guarantees are sorted, disjoint and not touching. */
  static fromPairs(pairs: Float64Array, n: number): Extents {
    const e = Object.create(Extents.prototype) as Extents;
    (e as unknown as { pairs: Float64Array; n: number }).pairs = pairs;
    (e as unknown as { pairs: Float64Array; n: number }).n = n;
    return e;
  }

  *[Symbol.iterator](): Iterator<Range> {
    const p = this.pairs;
    for (let i = 0; i < this.n; i++) yield { start: p[2 * i]!, end: p[2 * i + 1]! };
  }

  get count(): number {
    return this.n;
  }

  get isEmpty(): boolean {
    return this.n === 0;
  }

  toArray(): Range[] {
    return [...this];
  }

  /** Sum of the lengths of all ranges. */
  total(): number {
    let t = 0;
    const p = this.pairs;
    for (let i = 0; i < this.n; i++) t += p[2 * i + 1]! - p[2 * i]!;
    return t;
  }

  union(other: Extents): Extents {
    const a = this.pairs;
    const b = other.pairs;
    const out = new PairList(this.n + other.n);
    let i = 0;
    let j = 0;
    while (i < this.n || j < other.n) {
      if (j >= other.n || (i < this.n && a[2 * i]! <= b[2 * j]!)) {
        out.push(a[2 * i]!, a[2 * i + 1]!);
        i++;
      } else {
        out.push(b[2 * j]!, b[2 * j + 1]!);
        j++;
      }
    }
    return out.done();
  }

  intersect(other: Extents): Extents {
    const a = this.pairs;
    const b = other.pairs;
    const out = new PairList(Math.min(this.n + other.n, 1024));
    let i = 0;
    let j = 0;
    while (i < this.n && j < other.n) {
      const s = Math.max(a[2 * i]!, b[2 * j]!);
      const e = Math.min(a[2 * i + 1]!, b[2 * j + 1]!);
      if (s < e) out.push(s, e);
      if (a[2 * i + 1]! < b[2 * j + 1]!) i++;
      else j++;
    }
    return out.done();
  }

  subtract(other: Extents): Extents {
    const a = this.pairs;
    const b = other.pairs;
    const out = new PairList(this.n + 1);
    let j = 0;
    for (let i = 0; i < this.n; i++) {
      let start = a[2 * i]!;
      const end = a[2 * i + 1]!;
      while (j < other.n && b[2 * j + 1]! <= start) j++;
      let k = j;
      while (k < other.n && b[2 * k]! < end) {
        if (b[2 * k]! > start) out.push(start, b[2 * k]!);
        start = Math.max(start, b[2 * k + 1]!);
        if (start >= end) break;
        k++;
      }
      if (start < end) out.push(start, end);
    }
    return out.done();
  }

  /** The complement within [start, end). */
  complement(start: number, end: number): Extents {
    return Extents.of(start, end).subtract(this);
  }

  /** Shrink every range inward to multiples of `granularity` (relative to `origin`), dropping what vanishes. */
  alignInward(granularity: number, origin = 0): Extents {
    if (granularity <= 1) return this;
    const p = this.pairs;
    const out = new PairList(this.n);
    for (let i = 0; i < this.n; i++) {
      const s = origin + Math.ceil((p[2 * i]! - origin) / granularity) * granularity;
      const e = origin + Math.floor((p[2 * i + 1]! - origin) / granularity) * granularity;
      if (s < e) out.push(s, e);
    }
    return out.done();
  }

  /** Grow every range outward to multiples of `granularity` (relative to `origin`), merging what then touches. */
  alignOutward(granularity: number, origin = 0): Extents {
    if (granularity <= 1) return this;
    // Ascending starts stay ascending once rounded down, so merging as they come is enough.
    const p = this.pairs;
    const out = new PairList(this.n);
    for (let i = 0; i < this.n; i++) {
      out.push(origin + Math.floor((p[2 * i]! - origin) / granularity) * granularity, origin + Math.ceil((p[2 * i + 1]! - origin) / granularity) * granularity);
    }
    return out.done();
  }

  /** Shift every range by `delta`. */
  shift(delta: number): Extents {
    const q = this.pairs.slice(0, 2 * this.n);
    for (let i = 0; i < q.length; i++) q[i] = q[i]! + delta;
    return Extents.fromPairs(q, this.n);
  }

  /** Clip to [start, end). */
  clip(start: number, end: number): Extents {
    return this.intersect(Extents.of(start, end));
  }

  contains(offset: number): boolean {
    let lo = 0;
    let hi = this.n - 1;
    const p = this.pairs;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (offset < p[2 * mid]!) hi = mid - 1;
      else if (offset >= p[2 * mid + 1]!) lo = mid + 1;
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
  private list = new PairList();

  add(start: number, end: number): void {
    if (end <= start) return;
    const n = this.list.n;
    if (n > 0 && start < this.list.buf[2 * n - 2]!) throw new Error('ExtentsBuilder: ranges must arrive in ascending order');
    this.list.push(start, end);
  }

  build(): Extents {
    const e = this.list.done();
    this.list = new PairList();
    return e;
  }
}
