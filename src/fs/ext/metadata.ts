/**
 * The blocks an ext filesystem uses for its own structures: superblock copies, descriptor tables,
 * reserved GDT blocks, bitmaps and inode tables. A group whose bitmap was never initialised
 * (BLOCK_UNINIT) is described by these alone, so this follows e2fsprogs' layout rules exactly.
 */
import { ExtentsBuilder, Extents } from '../../io/extents.js';
import { INCOMPAT, type ExtSuperblock } from './superblock.js';
import { descsPerBlock, groupFirstBlock, groupHasSuper, groupSuperBlock, type GroupDesc } from './groups.js';

/** Superblock and descriptor blocks of group `g`, in block numbers [start, end). */
function superAndDescBlocks(s: ExtSuperblock, g: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const groupBlock = groupSuperBlock(s, g);
  const hasSuper = groupHasSuper(s, g);
  const metaBg = (s.incompat & INCOMPAT.META_BG) !== 0;
  const dpb = descsPerBlock(s);
  const descBlocks = Math.ceil(s.groupCount / dpb);
  const oldDescBlocks = metaBg ? s.firstMetaBg : descBlocks + s.reservedGdtBlocks;
  if (hasSuper) out.push([groupBlock, groupBlock + 1]);
  if (!metaBg || Math.floor(g / dpb) < s.firstMetaBg) {
    if (hasSuper && oldDescBlocks > 0) out.push([groupBlock + 1, groupBlock + 1 + oldDescBlocks]);
  } else {
    const r = g % dpb;
    if (r === 0 || r === 1 || r === dpb - 1) {
      const b = groupBlock + (hasSuper ? 1 : 0);
      out.push([b, b + 1]);
    }
  }
  return out;
}

/** Blocks of one group's inode table. */
export function itableBlocks(s: ExtSuperblock): number {
  return Math.ceil((s.inodesPerGroup * s.inodeSize) / s.blockSize);
}

/**
 * Every metadata block of the filesystem, in block numbers. `itableLength`, when given, says how
 * many blocks of a group's inode table to count (the rest being provably unused).
 */
export function metadataBlocks(s: ExtSuperblock, groups: readonly GroupDesc[], itableLength?: (d: GroupDesc) => number): Extents {
  const fullTable = itableBlocks(s);
  const ranges: Array<{ start: number; end: number }> = [];
  // Everything before the first group (the boot block of a 1 KiB-block filesystem).
  if (s.firstDataBlock > 0) ranges.push({ start: 0, end: s.firstDataBlock });
  for (let g = 0; g < s.groupCount; g++) {
    for (const [a, b] of superAndDescBlocks(s, g)) ranges.push({ start: a, end: b });
  }
  for (const d of groups) {
    ranges.push({ start: d.blockBitmap, end: d.blockBitmap + 1 });
    ranges.push({ start: d.inodeBitmap, end: d.inodeBitmap + 1 });
    ranges.push({ start: d.inodeTable, end: d.inodeTable + (itableLength ? itableLength(d) : fullTable) });
  }
  return new Extents(ranges);
}

/** Metadata blocks expressed as used clusters, clipped to group `g`: a cluster with any metadata block is used. */
export function metadataClustersInGroup(s: ExtSuperblock, meta: Extents, g: number): Extents {
  const first = groupFirstBlock(s, g);
  const end = Math.min(first + s.blocksPerGroup, s.blocksCount);
  const b = new ExtentsBuilder();
  for (const r of meta.clip(first, end)) {
    const c0 = Math.floor((r.start - first) / s.clusterRatio);
    const c1 = Math.ceil((r.end - first) / s.clusterRatio);
    b.add(c0, c1);
  }
  return b.build();
}
