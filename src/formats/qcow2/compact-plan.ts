/**
 * Planning qcow2 compaction: which host clusters past the new end move into which free clusters
 * below it. Nothing is written here.
 *
 * The scan reads every refcount (used: refcount > 0) and walks the L1 and L2 tables and the
 * bitmaps to learn who points at each used cluster at or past U, the count of used clusters: no
 * cluster below U can ever move, so owners are kept only above it (memory follows what may move).
 * The plan then goes from the last used cluster down, giving each the lowest free cluster below
 * it, until none is left below: that cluster ends the image. Contiguous structures (the L1 table,
 * the refcount table, the bitmap directory and tables) take the lowest free run of their length.
 * Compressed clusters are not moved whole: each compressed fragment touching one is repacked, on
 * its own sectors, into new clusters. A refcount block whose clusters will all lie past the end
 * is dropped instead of moved. A cluster whose owner is unknown (a leak left as it is) stops the
 * plan where it stands: nothing is ever moved without knowing every pointer to it.
 */
import type { BlockFile } from '../../io/file.js';
import { hex } from '../../io/errors.js';
import type { Qcow2Header } from './header.js';
import type { Qcow2Refcounts } from './discard-refcount.js';
import { L2_COMPRESSED, standardHost, type Qcow2Layout } from './discard-layout.js';
import type { Bitmap, Qcow2Bitmaps } from './bitmaps.js';

/** Above this many host clusters the scan's bitmaps would be too large. */
export const MAX_COMPACT_CLUSTERS = 2 ** 30;

const OWNER_NONE = 0;
const OWNER_DATA = 1;
const OWNER_L2 = 2;
const OWNER_REFBLOCK = 3;
const OWNER_BITMAP_DATA = 4;
const OWNER_RUN = 5;
const OWNER_COMPRESSED = 6;

/** A contiguous structure the header, the bitmaps extension or the bitmap directory points at. */
export interface Run {
  what: 'L1 table' | 'refcount table' | 'bitmap directory' | 'bitmap table';
  first: number;
  clusters: number;
  bitmap?: Bitmap;
}

/** A compressed cluster's bytes: guest cluster `guest`, sectors from `host`'s sector. */
export interface FragmentRef {
  guest: number;
  host: number;
  sectors: number;
}

export type Move =
  | { kind: 'data'; from: number; to: number; guest: number }
  | { kind: 'l2'; from: number; to: number; l1i: number }
  | { kind: 'bitmap-data'; from: number; to: number; bitmap: Bitmap; j: number }
  | { kind: 'refblock'; from: number; to: number; index: number }
  | { kind: 'run'; run: Run; to: number }
  /** A fragment repacked at byte `to` (sector aligned plus the old offset within its sector). */
  | { kind: 'fragment'; frag: FragmentRef; to: number };

export interface CompactPlan {
  moves: Move[];
  /** Refcount blocks (by table index) to drop: everything they count will lie past the end. */
  dropBlocks: number[];
  /** The new end, in clusters. */
  endClusters: number;
  /** Where the image ends now, in clusters (the last used cluster + 1). */
  usedEndClusters: number;
  /** Clusters in the file (a device: in the device). */
  fileClusters: number;
  /** refcount > 0, per cluster below fileClusters, as planned (moves applied). */
  used: Uint8Array;
  /** Guest clusters whose data moves (for the dirty bitmaps). */
  movedGuests: number[];
  /** Why compaction cannot run (the image needs repair); nothing else is set then. */
  refused?: string;
}

class Bits {
  readonly b: Uint8Array;
  constructor(n: number) {
    this.b = new Uint8Array(Math.ceil(n / 8) + 1);
  }
  set(c: number): void {
    this.b[c >> 3]! |= 1 << (c & 7);
  }
  clear(c: number): void {
    this.b[c >> 3]! &= ~(1 << (c & 7));
  }
  has(c: number): boolean {
    return (this.b[c >> 3]! & (1 << (c & 7))) !== 0;
  }
}

/** Who points at each used cluster at or past `base`. */
class Owners {
  readonly kind: Uint8Array;
  /** data: guest cluster; l2: L1 index; refblock: table index; bitmap data: table index. */
  readonly arg: Float64Array;
  readonly runs = new Map<number, Run>();
  readonly bitmapOf = new Map<number, Bitmap>();
  /** Compressed clusters: the fragments touching each. */
  readonly fragments = new Map<number, FragmentRef[]>();

  constructor(
    readonly base: number,
    n: number,
  ) {
    this.kind = new Uint8Array(Math.max(0, n - base));
    this.arg = new Float64Array(Math.max(0, n - base));
  }

  put(c: number, kind: number, arg = 0): void {
    if (c < this.base || c - this.base >= this.kind.length) return;
    this.kind[c - this.base] = kind;
    this.arg[c - this.base] = arg;
  }
}

export interface PlanInput {
  file: BlockFile;
  h: Qcow2Header;
  layout: Qcow2Layout;
  refcounts: Qcow2Refcounts;
  bitmaps: Qcow2Bitmaps | undefined;
}

/** Scan the image and plan the moves. */
export async function planCompaction(x: PlanInput): Promise<CompactPlan> {
  const { file, h, layout, refcounts, bitmaps } = x;
  const cs = h.clusterSize;
  const n = Math.ceil(file.size / cs);
  const empty = (refused: string): CompactPlan => ({ moves: [], dropBlocks: [], endClusters: n, usedEndClusters: n, fileClusters: n, used: new Uint8Array(0), movedGuests: [], refused });
  if (n > MAX_COMPACT_CLUSTERS) return empty(`the image has too many clusters (${n}) to compact`);

  // Refcounts: what is used, how much, where the image ends.
  const used = new Bits(n);
  let usedCount = 0;
  let usedEnd = 0;
  for (const { index, first } of refcounts.coveredBlocks()) {
    const value = await refcounts.blockValues(index);
    const k = Math.min(refcounts.perBlock, n - first);
    for (let i = 0; i < k; i++) {
      if (value(i) > 0) {
        used.set(first + i);
        usedCount++;
        usedEnd = first + i + 1;
      }
    }
  }
  const owners = new Owners(usedCount, n);
  const referenced = new Bits(n);
  const ref = (c: number, kind: number, arg = 0): void => {
    if (c >= n) return;
    referenced.set(c);
    owners.put(c, kind, arg);
  };

  // Who points where: header, tables, L2 entries, bitmaps.
  ref(0, OWNER_NONE);
  const runs: Run[] = [
    { what: 'L1 table', first: h.l1TableOffset / cs, clusters: Math.ceil((h.l1Size * 8) / cs) },
    { what: 'refcount table', first: h.refcountTableOffset / cs, clusters: h.refcountTableClusters },
  ];
  if (bitmaps) {
    runs.push({ what: 'bitmap directory', first: bitmaps.directoryOffset / cs, clusters: Math.ceil(bitmaps.directorySize / cs) });
    for (const b of bitmaps.bitmaps) {
      runs.push({ what: 'bitmap table', first: b.tableOffset / cs, clusters: Math.ceil((b.table.length * 8) / cs), bitmap: b });
      b.table.forEach((e, j) => {
        if (e > 1n) {
          ref(Number(e) / cs, OWNER_BITMAP_DATA, j);
          owners.bitmapOf.set(Number(e) / cs, b);
        }
      });
    }
  }
  for (const r of runs) {
    if (r.clusters === 0) continue;
    for (let c = r.first; c < r.first + r.clusters; c++) ref(c, OWNER_NONE);
    owners.put(r.first + r.clusters - 1, OWNER_RUN);
    owners.runs.set(r.first + r.clusters - 1, r);
  }
  if (h.backingFileOffset) for (let c = Math.floor(h.backingFileOffset / cs); c * cs < h.backingFileOffset + h.backingFileSize; c++) ref(c, OWNER_NONE);
  for (let i = 0; i < refcounts.tableEntries; i++) {
    const off = refcounts.blockOffset(i);
    if (off) ref(off / cs, OWNER_REFBLOCK, i);
  }
  const l2e = layout.l2Entries;
  for (let i = 0; i < layout.l1Size; i++) {
    const off = layout.l2Offset(i);
    if (off === 0) continue;
    ref(off / cs, OWNER_L2, i);
    const t = await layout.readL2(i);
    for (let idx = 0; idx < l2e; idx++) {
      const e = idx * layout.entryBytes;
      const hi = t.readUInt32BE(e);
      const lo = t.readUInt32BE(e + 4);
      const guest = i * l2e + idx;
      if (hi & L2_COMPRESSED) {
        const f = layout.fragment(hi, lo, guest * cs);
        const frag: FragmentRef = { guest, host: f.host, sectors: f.sectors };
        for (const c of layout.compressedClusters(hi, lo, guest * cs)) {
          referenced.set(c);
          if (c >= owners.base) {
            owners.put(c, OWNER_COMPRESSED);
            let list = owners.fragments.get(c);
            if (!list) owners.fragments.set(c, (list = []));
            list.push(frag);
          }
        }
        continue;
      }
      const host = standardHost(hi, lo);
      if (host !== 0) ref(layout.dataCluster(host, guest * cs), OWNER_DATA, guest);
    }
  }
  for (let c = 0; c < n; c++) {
    if (referenced.has(c) && !used.has(c)) return empty(`the cluster at ${hex(c * cs)} is in use but has refcount 0; run 'qemu-img check -r all' first`);
  }
  return greedy({ used, referenced, owners, n, usedEnd, refcounts, cs });
}

interface GreedyInput {
  used: Bits;
  referenced: Bits;
  owners: Owners;
  n: number;
  usedEnd: number;
  refcounts: Qcow2Refcounts;
  cs: number;
}

/** From the top down, each used cluster to the lowest free cluster below it. */
function greedy(g: GreedyInput): CompactPlan {
  const { used, owners, n, refcounts, cs } = g;
  const free = (c: number): boolean => c > 0 && !used.has(c) && !g.referenced.has(c) && refcounts.covers(c);
  let low = 1;
  const nextFree = (): number => {
    while (low < n && !free(low)) low++;
    return low;
  };
  const take = (): number => {
    const c = nextFree();
    used.set(c);
    return c;
  };
  /** The lowest run of `k` free clusters, or -1. */
  const findRun = (k: number, below: number): number => {
    for (let s = nextFree(); s + k <= below; ) {
      let len = 0;
      while (len < k && free(s + len)) len++;
      if (len === k) return s;
      s += len + 1;
      while (s < below && !free(s)) s++;
    }
    return -1;
  };
  const moves: Move[] = [];
  const movedGuests: number[] = [];
  const dropBlocks: number[] = [];
  const movedFrags = new Set<FragmentRef>();
  /** Repacking: the cluster being filled with fragments, and the next free byte in it. */
  let pack = -1;
  let packAt = 0;
  let stop = 0;
  let maxDest = 0;

  for (let c = g.usedEnd - 1; c >= 1; c--) {
    if (!used.has(c)) continue;
    const kind = c >= owners.base ? owners.kind[c - owners.base]! : OWNER_NONE;
    const arg = c >= owners.base ? owners.arg[c - owners.base]! : 0;
    if (kind === OWNER_REFBLOCK && arg * refcounts.perBlock >= c) {
      // Everything it counts lies at or past this cluster, which all moves away: drop it.
      dropBlocks.push(arg);
      used.clear(c);
      continue;
    }
    if (kind === OWNER_RUN) {
      const run = owners.runs.get(c)!;
      const to = findRun(run.clusters, run.first);
      if (to < 0) {
        stop = c;
        break;
      }
      for (let k = 0; k < run.clusters; k++) {
        used.set(to + k);
        used.clear(run.first + k);
      }
      moves.push({ kind: 'run', run, to });
      maxDest = Math.max(maxDest, to + run.clusters - 1);
      c = run.first; // the loop's c-- continues below the run
      continue;
    }
    if (kind === OWNER_COMPRESSED) {
      const frags = owners.fragments.get(c)!.filter((f) => !movedFrags.has(f));
      // Simulate the packing first: all of this cluster's fragments move, or none.
      let need = 0;
      let room = pack >= 0 ? cs - packAt : 0;
      for (const f of frags) {
        const bytes = f.sectors * 512;
        if (bytes > room) {
          need++;
          room = cs;
        }
        room -= bytes;
      }
      if (need > 0) {
        let avail = 0;
        for (let d = nextFree(); d < c && avail < need; d++) if (free(d)) avail++;
        if (avail < need) {
          stop = c;
          break;
        }
      }
      for (const f of frags) {
        const bytes = f.sectors * 512;
        if (pack < 0 || packAt + bytes > cs) {
          pack = take();
          packAt = 0;
          maxDest = Math.max(maxDest, pack);
        }
        moves.push({ kind: 'fragment', frag: f, to: pack * cs + packAt + (f.host % 512) });
        movedGuests.push(f.guest);
        movedFrags.add(f);
        packAt += bytes;
        // The clusters it touched lose it; one touched below keeps its other fragments.
        const first = Math.floor((f.host - (f.host % 512)) / cs);
        const last = Math.floor((f.host - (f.host % 512) + bytes - 1) / cs);
        for (let k = first; k <= last; k++) {
          const left = owners.fragments.get(k)?.filter((x) => !movedFrags.has(x)).length ?? 0;
          if (left === 0 && k >= owners.base && owners.kind[k - owners.base] === OWNER_COMPRESSED) used.clear(k);
        }
      }
      continue;
    }
    if (kind === OWNER_NONE) {
      // The header, a table's inner cluster, or a cluster nobody is known to point at: it stays.
      stop = c;
      break;
    }
    if (nextFree() >= c) {
      stop = c;
      break;
    }
    const to = take();
    used.clear(c);
    maxDest = Math.max(maxDest, to);
    if (kind === OWNER_DATA) {
      moves.push({ kind: 'data', from: c, to, guest: arg });
      movedGuests.push(arg);
    } else if (kind === OWNER_L2) moves.push({ kind: 'l2', from: c, to, l1i: arg });
    else if (kind === OWNER_BITMAP_DATA) moves.push({ kind: 'bitmap-data', from: c, to, bitmap: owners.bitmapOf.get(c)!, j: arg });
    else moves.push({ kind: 'refblock', from: c, to, index: arg });
  }
  const endClusters = Math.max(stop + 1, maxDest + 1);
  return { moves, dropBlocks, endClusters, usedEndClusters: g.usedEnd, fileClusters: n, used: used.b, movedGuests };
}
