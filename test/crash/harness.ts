/**
 * Power-cut states of an in-place run, in the style of CrashMonkey and ALICE. A run is recorded at
 * the I/O layer (every write, punch, discard, truncate and fdatasync the product issues on the
 * image, through io/observer.ts), then crash states are rebuilt from a copy of the image as it was
 * before the run. A power cut keeps everything made durable by an fdatasync and any subset of what
 * came after it, so for every fsync epoch (the operations between two fdatasyncs) the states are:
 * nothing of the epoch, all of it, in-order prefixes, and random subsets, seeded so a failure can
 * be replayed, where a write may also be torn at 512-byte sector boundaries.
 */
import { resolve } from 'node:path';
import { closeSync, copyFileSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { observeIo, type IoOp } from '../../src/io/observer.js';
import * as sys from '../../src/io/syscalls.js';

const SECTOR = 512;

/** Record the changes `fn` makes to the file at `path` (and only to it). */
export async function recordIo<T>(path: string, fn: () => Promise<T>): Promise<{ result: T; ops: IoOp[] }> {
  const want = resolve(path);
  const ops: IoOp[] = [];
  const stop = observeIo((p, op) => {
    if (resolve(p) === want) ops.push(op);
  });
  try {
    return { result: await fn(), ops };
  } finally {
    stop();
  }
}

/** The operations between two fdatasyncs. The last epoch may end without one (the run's tail). */
export function epochsOf(ops: readonly IoOp[]): IoOp[][] {
  const out: IoOp[][] = [[]];
  for (const op of ops) {
    if (op.kind === 'sync') out.push([]);
    else out[out.length - 1]!.push(op);
  }
  if (out.length > 1 && out[out.length - 1]!.length === 0) out.pop();
  return out;
}

/** One operation of an epoch in a crash state: whole, or (a write) only some of its sectors. */
interface Piece {
  op: number;
  /** Sector indices of a torn write that persisted; undefined: the whole operation. */
  sectors?: number[];
}

export interface CrashState {
  /** Epochs applied whole before this one. */
  epoch: number;
  /** What of epoch `epoch` persisted. */
  pieces: Piece[];
  /** "epoch 7: prefix 3/12", for messages. */
  label: string;
}

/** Small, seedable PRNG (mulberry32): the same seed gives the same states. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface StateOptions {
  seed: number;
  /** In-order prefixes per epoch (spread over its length). */
  prefixes: number;
  /** Random subsets per epoch. */
  randoms: number;
  /** Probability that a chosen write of more than one sector is torn in a random subset. */
  tearRate?: number;
}

/**
 * Every crash state to try, without duplicates: a state that applies all of epoch k is the same
 * as the state that applies none of epoch k+1.
 */
export function crashStates(epochs: readonly IoOp[][], o: StateOptions): CrashState[] {
  const rand = rng(o.seed);
  const seen = new Set<string>();
  const out: CrashState[] = [];
  const add = (epoch: number, pieces: Piece[], label: string): void => {
    const n = epochs[epoch]?.length ?? 0;
    // Normalise "all of epoch k" to "none of epoch k+1".
    if (n > 0 && pieces.length === n && pieces.every((p, i) => p.op === i && !p.sectors)) {
      epoch += 1;
      pieces = [];
    }
    const key = `${epoch}:${pieces.map((p) => (p.sectors ? `${p.op}[${p.sectors.join('.')}]` : p.op)).join(',')}`;
    if (seen.has(key)) return;
    seen.add(key);
    out.push({ epoch, pieces, label });
  };
  for (let k = 0; k < epochs.length; k++) {
    const ops = epochs[k]!;
    const n = ops.length;
    add(k, [], `epoch ${k}: none of ${n}`);
    if (n === 0) continue;
    add(k, ops.map((_, i) => ({ op: i })), `epoch ${k}: all ${n}`);
    for (let j = 1; j <= o.prefixes; j++) {
      const len = Math.floor((j * n) / (o.prefixes + 1));
      if (len > 0 && len < n) add(k, Array.from({ length: len }, (_, i) => ({ op: i })), `epoch ${k}: prefix ${len}/${n}`);
    }
    for (let r = 0; r < o.randoms; r++) {
      const pieces: Piece[] = [];
      for (let i = 0; i < n; i++) {
        if (rand() >= 0.5) continue;
        const op = ops[i]!;
        const sectors = op.kind === 'write' ? Math.ceil(op.data.length / SECTOR) : 1;
        if (sectors > 1 && rand() < (o.tearRate ?? 0.25)) {
          const keep: number[] = [];
          for (let s = 0; s < sectors; s++) if (rand() < 0.5) keep.push(s);
          if (keep.length > 0 && keep.length < sectors) {
            pieces.push({ op: i, sectors: keep });
            continue;
          }
        }
        pieces.push({ op: i });
      }
      add(k, pieces, `epoch ${k}: random subset ${r} (seed ${o.seed}) of ${n}`);
    }
  }
  // Built in epoch order (a state normalised to "none of k+1" may come after states of epoch k).
  return out.map((s, i) => ({ s, i })).sort((a, b) => a.s.epoch - b.s.epoch || a.i - b.i).map(({ s }) => s);
}

/** Apply one operation (or some sectors of a write) to an open file. */
function apply(fd: number, op: IoOp, sectors?: number[]): void {
  switch (op.kind) {
    case 'write':
      if (!sectors) {
        writeSync(fd, op.data, 0, op.data.length, op.offset);
        return;
      }
      for (const s of sectors) {
        const from = s * SECTOR;
        const len = Math.min(SECTOR, op.data.length - from);
        writeSync(fd, op.data, from, len, op.offset + from);
      }
      return;
    case 'punch':
    case 'discard':
      // A discarded device range may read as anything; zeros (a punched file) is one of those.
      sys.punchHole(fd, op.offset, op.length);
      return;
    case 'truncate':
      ftruncateSync(fd, op.size);
      return;
    case 'sync':
      return;
  }
}

/**
 * Builds crash states as files: `durable` advances epoch by epoch from the pristine image, and
 * each state is a copy of it plus the state's pieces of the next epoch.
 */
export class StateBuilder {
  private applied = 0;

  constructor(
    private readonly epochs: readonly IoOp[][],
    pristine: string,
    private readonly durable: string,
  ) {
    copyFileSync(pristine, durable);
  }

  /** Write state `s` to `out` (states must come in ascending epoch order). */
  build(s: CrashState, out: string): void {
    if (s.epoch < this.applied) throw new Error('crash states must be built in epoch order');
    if (s.epoch > this.applied) {
      const fd = openSync(this.durable, 'r+');
      try {
        for (; this.applied < s.epoch; this.applied++) for (const op of this.epochs[this.applied] ?? []) apply(fd, op);
      } finally {
        closeSync(fd);
      }
    }
    copyFileSync(this.durable, out);
    const fd = openSync(out, 'r+');
    try {
      for (const p of s.pieces) apply(fd, this.epochs[s.epoch]![p.op]!, p.sectors);
    } finally {
      closeSync(fd);
    }
  }
}

/** A short digest of a log, so a test can say which run its states came from. */
export function logDigest(ops: readonly IoOp[]): string {
  const h = createHash('sha256');
  for (const op of ops) {
    h.update(op.kind);
    if (op.kind === 'write') h.update(`${op.offset}:`).update(op.data);
    else if (op.kind === 'punch' || op.kind === 'discard') h.update(`${op.offset}+${op.length}`);
    else if (op.kind === 'truncate') h.update(String(op.size));
  }
  return h.digest('hex').slice(0, 12);
}

/** Counts of the operations in a log, for test diagnostics. */
export function opCounts(ops: readonly IoOp[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const op of ops) c[op.kind] = (c[op.kind] ?? 0) + 1;
  return c;
}
