/**
 * btrfs free-space reader (one device; SINGLE and DUP profiles).
 *
 * Free = device space no chunk stripe covers (beyond the first MiB, which btrfs never allocates)
 * + inside every block group, the logical ranges no EXTENT_ITEM/METADATA_ITEM covers, mapped to
 * each stripe (both copies for DUP); superblock copies are never free. Trust requires a verified
 * superblock and tree blocks, no log tree, one device, known features, and agreement between
 * chunks, block groups, dev extents and the block groups' `used` counters.
 */
import { Extents, type Range } from '../io/extents.js';
import { CorruptError, hex } from '../io/errors.js';
import type { Volume } from '../layout/volume.js';
import type { FsAnalysis, FsReader } from './types.js';
import {
  BTRFS_MAGIC, COMPAT_RO_BLOCK_GROUP_TREE, RESERVED_START, SUPER_MIRRORS, SUPER_OFFSET, SUPER_SIZE,
  formatUuid, parseBtrfsSuper, type BtrfsSuper,
} from './btrfs-super.js';
import { BG_DUP, BG_PROFILE_MASK, ChunkMap, KEY, parseChunk, parseSysChunkArray, type Chunk } from './btrfs-tree.js';

const EXTENT_TREE = 2n;
const DEV_TREE = 4n;
const BLOCK_GROUP_TREE = 11n;
const FIRST_CHUNK_TREE = 256n;

interface BlockGroup {
  start: number;
  length: number;
  used: number;
  flags: bigint;
}

interface RootRef {
  bytenr: number;
  level: number;
}

function profileName(type: bigint): string {
  const names = ['RAID0', 'RAID1', 'DUP', 'RAID10', 'RAID5', 'RAID6', 'RAID1C3', 'RAID1C4'];
  const p = names.filter((_, i) => type & (1n << BigInt(i + 3)));
  return p.length ? p.join('|') : 'single';
}

/** ROOT_ITEMs of the trees we need (extent, dev, block group), from the root tree. */
async function findRoots(map: ChunkMap, sb: BtrfsSuper): Promise<Map<bigint, RootRef>> {
  const roots = new Map<bigint, RootRef>();
  await map.walk(
    sb.root,
    sb.rootLevel,
    (key, data, where) => {
      if (key.type !== KEY.ROOT_ITEM || ![EXTENT_TREE, DEV_TREE, BLOCK_GROUP_TREE].includes(key.objectid)) return;
      if (data.length < 239) throw new CorruptError(`${where}: root item is truncated`);
      roots.set(key.objectid, { bytenr: Number(data.readBigUInt64LE(176)), level: data[238]! });
    },
    { min: EXTENT_TREE, max: BLOCK_GROUP_TREE },
  );
  return roots;
}

export const btrfsReader: FsReader = {
  name: 'btrfs',

  async probe(volume: Volume): Promise<boolean> {
    try {
      if (volume.size < SUPER_OFFSET + SUPER_SIZE) return false;
      return (await volume.readAt(SUPER_OFFSET + 0x40, 8)).equals(BTRFS_MAGIC);
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume): Promise<FsAnalysis> {
    if (volume.size < SUPER_OFFSET + SUPER_SIZE) throw new CorruptError(`btrfs: volume of ${volume.size} bytes is too small`);
    const sb = parseBtrfsSuper(await volume.readAt(SUPER_OFFSET, SUPER_SIZE));
    const result: FsAnalysis = {
      type: 'btrfs',
      label: sb.label || undefined,
      uuid: formatUuid(sb.fsid),
      blockSize: sb.sectorSize,
      size: Math.min(sb.devTotalBytes, volume.size),
      usedBytes: Math.min(sb.devTotalBytes, volume.size),
      freeBytes: 0,
      free: new Extents(),
      trusted: false,
      warnings: [],
      details: { generation: Number(sb.generation), nodeSize: sb.nodeSize, devices: sb.numDevices, csumType: sb.csumType },
    };
    const keep = (why: string): FsAnalysis => {
      result.warnings.push(`btrfs: ${why}; keeping the filesystem whole`);
      return result;
    };
    if (sb.problems.length) return keep(sb.problems.join('; '));
    if (sb.numDevices !== 1) return keep(`the filesystem spans ${sb.numDevices} devices`);
    if (sb.logRoot !== 0) return keep('a log tree is present (fsync data not yet replayed by a mount)');
    if (sb.devTotalBytes > volume.size) {
      throw new CorruptError(`btrfs: device size ${hex(sb.devTotalBytes)} exceeds the volume (${hex(volume.size)}); image truncated?`);
    }

    // Chunk tree, bootstrapped from the superblock's system chunks.
    const map = new ChunkMap(volume, sb);
    map.set(parseSysChunkArray(sb));
    const chunks: Chunk[] = [];
    let devItems = 0;
    await map.walk(sb.chunkRoot, sb.chunkRootLevel, (key, data, where) => {
      if (key.type === KEY.CHUNK_ITEM && key.objectid === FIRST_CHUNK_TREE) chunks.push(parseChunk(data, 0, data.length, key.offset, where));
      else if (key.type === KEY.DEV_ITEM) devItems++;
    });
    if (devItems !== 1) return keep(`the chunk tree lists ${devItems} devices`);
    for (const c of chunks) {
      const profile = c.type & BG_PROFILE_MASK;
      if (profile !== 0n && profile !== BG_DUP) return keep(`chunk at ${hex(c.logical)} uses the ${profileName(c.type)} profile`);
      if (c.stripes.length !== (profile === BG_DUP ? 2 : 1)) return keep(`chunk at ${hex(c.logical)} has ${c.stripes.length} stripes for ${profileName(c.type)}`);
      for (const s of c.stripes) {
        if (s.devid !== sb.devId) return keep(`chunk at ${hex(c.logical)} has a stripe on device ${s.devid}`);
        if (s.offset + c.length > sb.devTotalBytes) {
          throw new CorruptError(`btrfs: chunk at ${hex(c.logical)} has a stripe at ${hex(s.offset)} outside the device`);
        }
      }
    }
    map.set(chunks);

    const roots = await findRoots(map, sb);
    const extentRoot = roots.get(EXTENT_TREE);
    const devRoot = roots.get(DEV_TREE);
    if (!extentRoot || !devRoot) throw new CorruptError('btrfs: root tree lacks the extent or device tree');
    const bgTree = (sb.compatRo & COMPAT_RO_BLOCK_GROUP_TREE) !== 0n;
    const bgRoot = roots.get(BLOCK_GROUP_TREE);
    if (bgTree && !bgRoot) throw new CorruptError('btrfs: block-group-tree feature set but the root tree lacks it');

    // Used extents (ascending, disjoint; two numbers each, as there may be millions) and block groups.
    const usedStart: number[] = [];
    const usedEnd: number[] = [];
    const bgs: BlockGroup[] = [];
    const onBlockGroup = (key: { objectid: bigint; type: number; offset: bigint }, data: Buffer, where: string): void => {
      if (key.type !== KEY.BLOCK_GROUP_ITEM) return;
      if (data.length < 24) throw new CorruptError(`${where}: block group item is truncated`);
      bgs.push({ start: Number(key.objectid), length: Number(key.offset), used: Number(data.readBigUInt64LE(0)), flags: data.readBigUInt64LE(16) });
    };
    await map.walk(extentRoot.bytenr, extentRoot.level, (key, data, where) => {
      if (key.type === KEY.EXTENT_ITEM || key.type === KEY.METADATA_ITEM) {
        const start = Number(key.objectid);
        const len = key.type === KEY.METADATA_ITEM ? sb.nodeSize : Number(key.offset);
        if (len <= 0 || !Number.isSafeInteger(start + len) || (usedEnd.length && start < usedEnd[usedEnd.length - 1]!)) {
          throw new CorruptError(`${where}: extent ${hex(start)}+${hex(len)} overlaps its predecessor or is malformed`);
        }
        usedStart.push(start);
        usedEnd.push(start + len);
      } else if (!bgTree) {
        onBlockGroup(key, data, where);
      }
    });
    if (bgTree) await map.walk(bgRoot!.bytenr, bgRoot!.level, onBlockGroup);

    // Dev extents must be exactly the chunk stripes.
    const devExtents: Range[] = [];
    await map.walk(devRoot.bytenr, devRoot.level, (key, data, where) => {
      if (key.type !== KEY.DEV_EXTENT) return;
      if (data.length < 32) throw new CorruptError(`${where}: dev extent is truncated`);
      const start = Number(key.offset);
      devExtents.push({ start, end: start + Number(data.readBigUInt64LE(24)) });
    });
    const stripes = new Extents(chunks.flatMap((c) => c.stripes.map((s) => ({ start: s.offset, end: s.offset + c.length }))));
    const devAlloc = new Extents(devExtents);
    if (devAlloc.count !== stripes.count || devAlloc.subtract(stripes).total() !== 0 || stripes.subtract(devAlloc).total() !== 0) {
      return keep('device extents do not match the chunk stripes');
    }

    // Block groups must match chunks one to one, and their `used` counters the extent items.
    if (bgs.length !== chunks.length) return keep(`${bgs.length} block groups for ${chunks.length} chunks`);
    let ui = 0;
    const freeFlat: number[] = [];
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!;
      const bg = bgs[i]!;
      if (bg.start !== c.logical || bg.length !== c.length || bg.flags !== c.type) {
        return keep(`block group at ${hex(bg.start)} does not match chunk at ${hex(c.logical)}`);
      }
      const end = c.logical + c.length;
      if (ui < usedStart.length && usedStart[ui]! < c.logical) return keep(`extent at ${hex(usedStart[ui]!)} lies outside every block group`);
      let sum = 0;
      let pos = c.logical;
      const gaps: number[] = [];
      for (; ui < usedStart.length && usedStart[ui]! < end; ui++) {
        const [us, ue] = [usedStart[ui]!, usedEnd[ui]!];
        if (ue > end) return keep(`extent at ${hex(us)} crosses the end of its block group`);
        if (us > pos) gaps.push(pos, us);
        pos = ue;
        sum += ue - us;
      }
      if (pos < end) gaps.push(pos, end);
      if (sum !== bg.used) return keep(`block group at ${hex(bg.start)} has ${sum} bytes of extents but records ${bg.used} used`);
      for (const s of c.stripes) for (let g = 0; g < gaps.length; g += 2) freeFlat.push(gaps[g]! - c.logical + s.offset, gaps[g + 1]! - c.logical + s.offset);
    }
    if (ui < usedStart.length) return keep(`extent at ${hex(usedStart[ui]!)} lies outside every block group`);

    const unallocated = Extents.of(RESERVED_START, sb.devTotalBytes).subtract(stripes);
    // Superblock copies, and the first MiB (boot loader area; very old mkfs put a chunk there).
    const keepAlways = new Extents([{ start: 0, end: RESERVED_START }, ...SUPER_MIRRORS.map((m) => ({ start: m, end: m + SUPER_SIZE }))]);
    const free = Extents.fromFlat(freeFlat).union(unallocated).subtract(keepAlways).clip(0, sb.devTotalBytes);
    result.free = free;
    result.freeBytes = free.total();
    result.usedBytes = result.size - result.freeBytes;
    result.trusted = true;
    result.details!.chunks = chunks.length;
    result.details!.unallocatedBytes = unallocated.total();
    return result;
  },
};
