/**
 * The grains a VMDK's grain tables point at, by host sector: what in-place mode needs to find a
 * grain's owner, to see free space between grains and to move grains down. One [entry, sector]
 * pair of u32 per allocated grain (8 bytes a grain, whatever the virtual size), kept sorted by
 * sector. `entry` is the grain's flat index across all grain tables (table * numGTEsPerGT + k).
 */
import { endianness } from 'node:os';
import { ExtentsBuilder, type Extents } from '../../io/extents.js';

/** The entry of a slot dropped from the index (its grain table entry no longer points there). */
const DEAD = 0xffffffff;
const LITTLE_ENDIAN = endianness() === 'LE';

export class GrainSlots {
  /** [entry0, sector0, entry1, sector1, ...]; read as u64 on a little-endian host, sector is the high half. */
  private pairs = new Uint32Array(2048);
  private n = 0;
  private live = 0;
  private sorted = true;

  /** Slots still referenced. */
  get count(): number {
    return this.live;
  }

  add(entry: number, sector: number): void {
    if (2 * this.n + 2 > this.pairs.length) {
      const bigger = new Uint32Array(this.pairs.length * 2);
      bigger.set(this.pairs);
      this.pairs = bigger;
    }
    this.pairs[2 * this.n] = entry;
    this.pairs[2 * this.n + 1] = sector;
    this.n++;
    this.live++;
    this.sorted = false;
  }

  /** Sort by sector (then entry): natively as u64 where the host is little-endian. */
  private sort(): void {
    if (this.sorted) return;
    const p = this.pairs;
    if (LITTLE_ENDIAN) {
      new BigUint64Array(p.buffer, 0, this.n).sort();
    } else {
      const order = Array.from({ length: this.n }, (_, i) => i).sort((a, b) => p[2 * a + 1]! - p[2 * b + 1]! || p[2 * a]! - p[2 * b]!);
      const q = new Uint32Array(p.length);
      order.forEach((from, to) => {
        q[2 * to] = p[2 * from]!;
        q[2 * to + 1] = p[2 * from + 1]!;
      });
      this.pairs = q;
    }
    this.sorted = true;
  }

  /** Live slots in ascending sector order: [index, entry, sector] (index is valid until the next move). */
  *ascending(): Generator<[number, number, number]> {
    this.sort();
    for (let i = 0; i < this.n; i++) {
      const e = this.pairs[2 * i]!;
      if (e !== DEAD) yield [i, e, this.pairs[2 * i + 1]!];
    }
  }

  /** Live slots from the highest sector down. */
  *descending(): Generator<[number, number, number]> {
    this.sort();
    for (let i = this.n - 1; i >= 0; i--) {
      const e = this.pairs[2 * i]!;
      if (e !== DEAD) yield [i, e, this.pairs[2 * i + 1]!];
    }
  }

  /** The grain table entry of slot `index` (from `ascending`/`descending`). */
  entryAt(index: number): number {
    return this.pairs[2 * index]!;
  }

  /** Forget the slot at `sector` owned by `entry` (its entry now says unallocated or zero). */
  remove(entry: number, sector: number): void {
    this.sort();
    let lo = 0;
    let hi = this.n - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.pairs[2 * mid + 1]!;
      if (s < sector) lo = mid + 1;
      else if (s > sector) hi = mid - 1;
      else {
        // Sectors are unique among live slots (checked at load); dead pairs may share one.
        for (let i = mid; i >= 0 && this.pairs[2 * i + 1] === sector; i--) if (this.kill(i, entry)) return;
        for (let i = mid + 1; i < this.n && this.pairs[2 * i + 1] === sector; i++) if (this.kill(i, entry)) return;
        break;
      }
    }
    throw new Error(`vmdk slot index: no grain at sector ${sector} for entry ${entry}`);
  }

  private kill(i: number, entry: number): boolean {
    if (this.pairs[2 * i] !== entry) return false;
    this.pairs[2 * i] = DEAD;
    this.live--;
    return true;
  }

  /** Slot `index` now lies at `sector` (a move); the order is restored when next read. */
  relocate(index: number, sector: number): void {
    this.pairs[2 * index + 1] = sector;
    this.sorted = false;
  }

  /**
   * The first two live slots closer than `minGap` sectors, if any: two grain table entries
   * sharing host space (a corrupt image, or one this tool must not touch).
   */
  overlap(minGap: number): { a: number; b: number; sector: number } | undefined {
    let prev: [number, number] | undefined;
    for (const [, e, s] of this.ascending()) {
      if (prev && s - prev[1] < minGap) return { a: prev[0], b: e, sector: s };
      prev = [e, s];
    }
    return undefined;
  }

  /** The host bytes of every live slot, `slotBytes` each, cut at `fileEnd`. */
  extents(slotBytes: number, fileEnd: number): Extents {
    const b = new ExtentsBuilder();
    for (const [, , s] of this.ascending()) {
      const at = s * 512;
      b.add(at, Math.min(at + slotBytes, fileEnd));
    }
    return b.build();
  }
}
