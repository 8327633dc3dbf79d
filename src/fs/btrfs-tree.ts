/**
 * btrfs chunk mapping and B-tree reading. Logical addresses map to device offsets through chunk
 * items (`struct btrfs_chunk` + stripes); every tree block is verified (checksum, own address,
 * fsid, level) before any of its keys is believed. Only single-device SINGLE and DUP chunks map;
 * anything else is refused by the caller before we get here.
 */
import { CorruptError, hex } from '../io/errors.js';
import type { Volume } from '../layout/volume.js';
import { checksumOk, type BtrfsSuper } from './btrfs-super.js';

export const KEY = {
  EXTENT_ITEM: 168,
  METADATA_ITEM: 169,
  BLOCK_GROUP_ITEM: 192,
  DEV_EXTENT: 204,
  DEV_ITEM: 216,
  CHUNK_ITEM: 228,
  ROOT_ITEM: 132,
} as const;

/** Chunk type bits: DATA 1, SYSTEM 2, METADATA 4; profile bits 3..10 (RAID0, RAID1, DUP, RAID10, RAID5, RAID6, RAID1C3, RAID1C4). */
export const BG_DUP = 1n << 5n;
export const BG_PROFILE_MASK = 0xff8n;

const HEADER = 0x65;
const ITEM = 25;
const KEY_PTR = 33;
const CHUNK_FIXED = 48;
const STRIPE = 32;
const MAX_LEVEL = 7;

export interface Key {
  objectid: bigint;
  type: number;
  offset: bigint;
}

export interface Chunk {
  logical: number;
  length: number;
  type: bigint;
  stripes: Array<{ devid: number; offset: number }>;
}

function num(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`btrfs: ${what} ${n} is out of range`);
  return Number(n);
}

export function readKey(b: Buffer, at: number): Key {
  return { objectid: b.readBigUInt64LE(at), type: b[at + 8]!, offset: b.readBigUInt64LE(at + 9) };
}

/** Parse one chunk item (fixed part + stripes) at `at`, whose item is `size` bytes long (or up to the buffer end). */
export function parseChunk(b: Buffer, at: number, size: number, logical: bigint, where: string): Chunk {
  if (size < CHUNK_FIXED || at + CHUNK_FIXED > b.length) throw new CorruptError(`${where}: chunk item is truncated`);
  const numStripes = b.readUInt16LE(at + 44);
  if (numStripes < 1 || numStripes > 16 || CHUNK_FIXED + numStripes * STRIPE > size || at + CHUNK_FIXED + numStripes * STRIPE > b.length) {
    throw new CorruptError(`${where}: chunk item has bad stripe count ${numStripes}`);
  }
  const stripes = [];
  for (let i = 0; i < numStripes; i++) {
    const s = at + CHUNK_FIXED + i * STRIPE;
    stripes.push({ devid: num(b.readBigUInt64LE(s), 'stripe devid'), offset: num(b.readBigUInt64LE(s + 8), 'stripe offset') });
  }
  const length = num(b.readBigUInt64LE(at), 'chunk length');
  const start = num(logical, 'chunk start');
  if (length === 0 || !Number.isSafeInteger(start + length)) throw new CorruptError(`${where}: chunk at ${hex(start)} has bad length`);
  return { logical: start, length, type: b.readBigUInt64LE(at + 24), stripes };
}

/** Bootstrap chunks from the superblock's sys_chunk_array: repeated (disk key, chunk item). */
export function parseSysChunkArray(sb: BtrfsSuper): Chunk[] {
  const a = sb.sysChunkArray;
  const out: Chunk[] = [];
  let pos = 0;
  while (pos < a.length) {
    const where = `btrfs: sys_chunk_array entry at byte ${pos}`;
    if (pos + 17 + CHUNK_FIXED > a.length) throw new CorruptError(`${where} is truncated`);
    const key = readKey(a, pos);
    if (key.type !== KEY.CHUNK_ITEM) throw new CorruptError(`${where} is not a chunk item (type ${key.type})`);
    const chunk = parseChunk(a, pos + 17, a.length - pos - 17, key.offset, where);
    out.push(chunk);
    pos += 17 + CHUNK_FIXED + chunk.stripes.length * STRIPE;
  }
  return out;
}

export class ChunkMap {
  private chunks: Chunk[] = [];

  constructor(
    private readonly volume: Volume,
    private readonly sb: BtrfsSuper,
  ) {}

  /** Replace the mapping (bootstrap first, then the full chunk tree). Chunks must not overlap. */
  set(chunks: Chunk[]): void {
    const sorted = [...chunks].sort((x, y) => x.logical - y.logical);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.logical < sorted[i - 1]!.logical + sorted[i - 1]!.length) {
        throw new CorruptError(`btrfs: chunks at ${hex(sorted[i - 1]!.logical)} and ${hex(sorted[i]!.logical)} overlap`);
      }
    }
    this.chunks = sorted;
  }

  get all(): readonly Chunk[] {
    return this.chunks;
  }

  find(logical: number): Chunk | undefined {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid]!;
      if (logical < c.logical) hi = mid - 1;
      else if (logical >= c.logical + c.length) lo = mid + 1;
      else return c;
    }
    return undefined;
  }

  /**
   * Read and verify the tree block at `logical`. Every copy is tried (DUP) until one passes the
   * checksum and header checks.
   */
  async readNode(logical: number, level: number): Promise<Buffer> {
    const where = `btrfs: tree block at logical ${hex(logical)}`;
    const ns = this.sb.nodeSize;
    const c = this.find(logical);
    if (!c || logical + ns > c.logical + c.length) throw new CorruptError(`${where} is not inside any chunk`);
    if ((c.type & BG_PROFILE_MASK & ~BG_DUP) !== 0n) throw new CorruptError(`${where} lies in a chunk with an unsupported profile`);
    let lastProblem = 'no readable copy';
    for (const s of c.stripes) {
      const phys = s.offset + (logical - c.logical);
      if (s.devid !== this.sb.devId || phys + ns > this.volume.size) {
        lastProblem = `copy at ${hex(phys)} lies outside the device`;
        continue;
      }
      const b = await this.volume.readAt(phys, ns);
      if (!checksumOk(this.sb, b)) lastProblem = `copy at ${hex(phys)} has a bad checksum`;
      else if (Number(b.readBigUInt64LE(0x30)) !== logical) lastProblem = `copy at ${hex(phys)} records a wrong own address`;
      else if (!b.subarray(0x20, 0x30).equals(this.sb.metadataUuid)) lastProblem = `copy at ${hex(phys)} belongs to another filesystem`;
      else if (b[0x64] !== level) lastProblem = `copy at ${hex(phys)} has level ${b[0x64]}, expected ${level}`;
      else return b;
    }
    throw new CorruptError(`${where}: ${lastProblem}`);
  }

  /**
   * Visit every leaf item of the tree rooted at `root`, in key order. `objectids`, when given,
   * limits the walk to keys whose objectid lies in [min, max] (subtrees outside are skipped).
   */
  async walk(
    root: number,
    rootLevel: number,
    visit: (key: Key, data: Buffer, where: string) => void,
    objectids?: { min: bigint; max: bigint },
  ): Promise<void> {
    if (rootLevel > MAX_LEVEL) throw new CorruptError(`btrfs: tree root at ${hex(root)} has bad level ${rootLevel}`);
    const seen = new Set<number>();
    const ns = this.sb.nodeSize;
    const stack: Array<{ logical: number; level: number }> = [{ logical: root, level: rootLevel }];
    while (stack.length) {
      const { logical, level } = stack.pop()!;
      if (seen.has(logical)) throw new CorruptError(`btrfs: tree block at logical ${hex(logical)} is reached twice`);
      seen.add(logical);
      const b = await this.readNode(logical, level);
      const where = `btrfs: tree block at logical ${hex(logical)}`;
      const n = b.readUInt32LE(0x60);
      if (level === 0) {
        if (n * ITEM > ns - HEADER) throw new CorruptError(`${where} has bad item count ${n}`);
        for (let i = 0; i < n; i++) {
          const at = HEADER + i * ITEM;
          const key = readKey(b, at);
          const off = b.readUInt32LE(at + 17);
          const size = b.readUInt32LE(at + 21);
          if (off + size > ns - HEADER) throw new CorruptError(`${where} item ${i} data lies outside the block`);
          if (objectids && (key.objectid < objectids.min || key.objectid > objectids.max)) continue;
          visit(key, b.subarray(HEADER + off, HEADER + off + size), `${where} item ${i}`);
        }
      } else {
        if (n < 1 || n * KEY_PTR > ns - HEADER) throw new CorruptError(`${where} has bad pointer count ${n}`);
        const children: Array<{ logical: number; level: number }> = [];
        for (let i = 0; i < n; i++) {
          const at = HEADER + i * KEY_PTR;
          if (objectids) {
            const lo = b.readBigUInt64LE(at);
            const next = i + 1 < n ? b.readBigUInt64LE(at + KEY_PTR) : undefined;
            // This child holds keys from key[i] up to key[i+1]; skip it if that range misses ours.
            if (lo > objectids.max || (next !== undefined && next < objectids.min)) continue;
          }
          children.push({ logical: num(b.readBigUInt64LE(at + 17), 'block pointer'), level: level - 1 });
        }
        // Depth-first with children pushed in reverse, so leaves are visited in key order.
        for (let i = children.length - 1; i >= 0; i--) stack.push(children[i]!);
      }
      if (seen.size > 1 << 24) throw new CorruptError(`btrfs: tree rooted at ${hex(root)} is implausibly large`);
    }
  }
}
