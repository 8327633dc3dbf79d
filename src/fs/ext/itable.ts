/**
 * Unused inode tables. With group checksums (uninit_bg or metadata_csum) each group descriptor
 * counts the inodes at the end of its table that were never used (bg_itable_unused). mke2fs with
 * lazy_itable_init leaves those blocks as they were (garbage, on a reused disk); the kernel's
 * lazyinit thread later zeroes exactly them, and e2fsck never reads them. Zeros, and so a hole,
 * are their correct content, whether or not ITABLE_ZEROED is set.
 *
 * A group's unused blocks are reclaimed only when:
 * - group checksums are on and every descriptor verified (the caller refuses the filesystem
 *   otherwise: e2fsck then clears the counts and scans whole tables);
 * - the count fits the group;
 * - the group's inode bitmap marks no inode in use past the count, and verifies under
 *   metadata_csum. An INODE_UNINIT group's bitmap was never written and is not read; its count
 *   alone is used, which is what the kernel's lazyinit and e2fsck use too.
 * Blocks holding any counted inode, and blocks another structure claims, stay used.
 */
import { Extents } from '../../io/extents.js';
import type { Volume } from '../../layout/volume.js';
import { RO_COMPAT, type ExtSuperblock } from './superblock.js';
import { BG_INODE_UNINIT, type GroupDesc } from './groups.js';
import { anyBitSet, bitmapChecksumHolds, readGroupBlocks } from './bitmap.js';
import { itableBlocks } from './metadata.js';

export interface UnusedItables {
  /** Unused inode-table blocks, in block numbers (not yet checked against other metadata). */
  blocks: Extents;
  /** Blocks of group `d`'s table still in use (the whole table where nothing was proved unused). */
  usedLength(d: GroupDesc): number;
  /** Groups whose counts could not be trusted, one line each (their tables are kept). */
  problems: string[];
}

function inodeBitmapChecksumError(s: ExtSuperblock, d: GroupDesc, bitmap: Buffer): string | undefined {
  if (bitmapChecksumHolds(s, bitmap, s.inodesPerGroup / 8, d.inodeBitmapCsum)) return undefined;
  return `inode bitmap of group ${d.index} at block ${d.inodeBitmap} fails its checksum`;
}

export async function unusedInodeTables(vol: Volume, s: ExtSuperblock, groups: readonly GroupDesc[]): Promise<UnusedItables> {
  const full = itableBlocks(s);
  const used = new Map<number, number>();
  const problems: string[] = [];
  const result = (): UnusedItables => {
    const ranges = [];
    for (const d of groups) {
      const u = used.get(d.index);
      if (u !== undefined) ranges.push({ start: d.inodeTable + u, end: d.inodeTable + full });
    }
    return { blocks: new Extents(ranges), usedLength: (d) => used.get(d.index) ?? full, problems };
  };
  if (!(s.roCompat & (RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM))) return result();

  const inodesPerBlock = s.blockSize / s.inodeSize;
  const usedInodes = (d: GroupDesc) => s.inodesPerGroup - d.itableUnused;
  const candidates = groups.filter((d) => {
    if (d.itableUnused === 0) return false;
    if (d.itableUnused > s.inodesPerGroup) {
      problems.push(`group ${d.index}: ${d.itableUnused} unused inodes counted in a group of ${s.inodesPerGroup}`);
      return false;
    }
    return d.inodeTable >= s.firstDataBlock && d.inodeTable + full <= s.blocksCount;
  });
  const accept = (d: GroupDesc) => used.set(d.index, Math.ceil(usedInodes(d) / inodesPerBlock));

  for (const d of candidates) if (d.flags & BG_INODE_UNINIT) accept(d);
  const written = candidates.filter((d) => !(d.flags & BG_INODE_UNINIT));
  for await (const [d, bitmap] of readGroupBlocks(vol, s, written, (g) => g.inodeBitmap, 'inode bitmap')) {
    const csumErr = inodeBitmapChecksumError(s, d, bitmap);
    if (csumErr) problems.push(csumErr);
    else if (anyBitSet(bitmap, usedInodes(d), s.inodesPerGroup)) problems.push(`group ${d.index}: inode bitmap marks inodes in use past the ${usedInodes(d)} its descriptor counts`);
    else accept(d);
  }
  return result();
}
