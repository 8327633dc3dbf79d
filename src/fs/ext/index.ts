/**
 * ext2/3/4 free space: the block bitmaps of every group, cross-checked against the group
 * descriptors' free counts and checksums, minus every metadata block the layout rules place.
 */
import { Extents, ExtentsBuilder } from '../../io/extents.js';
import type { Volume } from '../../layout/volume.js';
import type { FsAnalysis, FsReader } from '../types.js';
import { SUPERBLOCK_OFFSET, RO_COMPAT, COMPAT, distrustReasons, extTypeName, hasExtMagic, parseSuperblock, type ExtSuperblock } from './superblock.js';
import { BG_BLOCK_UNINIT, groupFirstBlock, readGroupDescs, type GroupDesc } from './groups.js';
import { metadataBlocks, metadataClustersInGroup } from './metadata.js';
import { bitmapChecksumHolds, freeRuns, readGroupBlocks } from './bitmap.js';
import { unusedInodeTables } from './itable.js';

function uuidString(u: Buffer): string {
  const h = u.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function clustersInGroup(s: ExtSuperblock, g: number): number {
  const first = groupFirstBlock(s, g);
  const blocks = Math.min(s.blocksPerGroup, s.blocksCount - first);
  return Math.ceil(blocks / s.clusterRatio);
}

function bitmapChecksumError(s: ExtSuperblock, d: GroupDesc, bitmap: Buffer): string | undefined {
  if (bitmapChecksumHolds(s, bitmap, s.clustersPerGroup / 8, d.blockBitmapCsum)) return undefined;
  return `block bitmap of group ${d.index} at block ${d.blockBitmap} fails its checksum`;
}

async function analyzeExt(vol: Volume): Promise<FsAnalysis> {
  const sbBuf = await vol.readAt(SUPERBLOCK_OFFSET, 1024);
  const s = parseSuperblock(sbBuf, vol.size);
  const type = extTypeName(s);
  const size = s.blocksCount * s.blockSize;
  const clusterBytes = s.blockSize * s.clusterRatio;
  const base = {
    type,
    label: s.label || undefined,
    uuid: uuidString(s.uuid),
    blockSize: clusterBytes,
    size,
    details: {
      blockSize: s.blockSize,
      groups: s.groupCount,
      journal: (s.compat & COMPAT.HAS_JOURNAL) !== 0,
      features: `compat 0x${s.compat.toString(16)} incompat 0x${s.incompat.toString(16)} ro_compat 0x${s.roCompat.toString(16)}`,
    },
  };
  const untrusted = (reasons: string[]): FsAnalysis => ({
    ...base,
    usedBytes: size - Math.min(size, s.freeBlocksCount * s.blockSize),
    freeBytes: Math.min(size, s.freeBlocksCount * s.blockSize),
    free: new Extents(),
    trusted: false,
    warnings: reasons.map((r) => `${r}: its free space is kept as it is`),
  });

  const reasons = distrustReasons(s, sbBuf);
  if (reasons.length) return untrusted(reasons);

  const groups = await readGroupDescs(vol, s);
  const descErrors = groups.flatMap((d) => (d.csumError ? [d.csumError] : []));
  if (descErrors.length) return untrusted([descErrors[0]! + (descErrors.length > 1 ? ` (and ${descErrors.length - 1} more)` : '')]);

  const meta = metadataBlocks(s, groups);
  const perGroup = new Map<number, Extents>();
  const problems: string[] = [];
  const hasCsum = (s.roCompat & (RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM)) !== 0;

  const check = (d: GroupDesc, freeBits: number, runs: Extents) => {
    if (freeBits !== d.freeClusters) {
      problems.push(`group ${d.index}: bitmap shows ${freeBits} free clusters but its descriptor says ${d.freeClusters}`);
      return;
    }
    perGroup.set(d.index, runs.subtract(metadataClustersInGroup(s, meta, d.index)));
  };

  // BLOCK_UNINIT is only honoured by the kernel when group checksums protect the flag.
  const uninit = groups.filter((d) => hasCsum && d.flags & BG_BLOCK_UNINIT);
  const initialised = groups.filter((d) => !(hasCsum && d.flags & BG_BLOCK_UNINIT));
  for (const d of uninit) {
    const n = clustersInGroup(s, d.index);
    const metaInGroup = metadataClustersInGroup(s, meta, d.index);
    const runs = Extents.of(0, n).subtract(metaInGroup);
    check(d, runs.total(), runs);
  }
  for await (const [d, bitmap] of readGroupBlocks(vol, s, initialised, (g) => g.blockBitmap, 'block bitmap')) {
    const csumErr = bitmapChecksumError(s, d, bitmap);
    if (csumErr) {
      problems.push(csumErr);
      continue;
    }
    const { runs, free } = freeRuns(bitmap, clustersInGroup(s, d.index));
    check(d, free, runs);
  }
  if (problems.length) return untrusted([problems[0]! + (problems.length > 1 ? ` (and ${problems.length - 1} more)` : '')]);

  const free = new ExtentsBuilder();
  for (let g = 0; g < s.groupCount; g++) {
    const first = groupFirstBlock(s, g) * s.blockSize;
    for (const r of perGroup.get(g) ?? new Extents()) {
      free.add(first + r.start * clusterBytes, Math.min(size, first + r.end * clusterBytes));
    }
  }
  const bitmapFree = free.build();
  const freeBytes = bitmapFree.total();

  // Unused inode tables are used blocks to the bitmap (so not in freeBytes), but provably hold nothing.
  const itables = await unusedInodeTables(vol, s, groups);
  const otherMeta = metadataBlocks(s, groups, itables.usedLength);
  const unusedItable = itables.blocks
    .subtract(otherMeta)
    .clip(s.firstDataBlock, s.blocksCount)
    .alignInward(s.clusterRatio);
  const unusedItableBytes = new Extents([...unusedItable].map((r) => ({ start: r.start * s.blockSize, end: r.end * s.blockSize })));
  const p = itables.problems;
  const warnings = p.length ? [`${p[0]}${p.length > 1 ? ` (and ${p.length - 1} more)` : ''}: unused inode tables there are kept`] : [];
  return {
    ...base,
    details: { ...base.details, unusedInodeTableBytes: unusedItableBytes.total() },
    usedBytes: size - freeBytes,
    freeBytes,
    free: bitmapFree.union(unusedItableBytes),
    trusted: true,
    warnings,
  };
}

export const extReader: FsReader = {
  name: 'ext',
  async probe(vol: Volume): Promise<boolean> {
    if (vol.size < SUPERBLOCK_OFFSET + 1024) return false;
    return hasExtMagic(await vol.readAt(SUPERBLOCK_OFFSET, 1024));
  },
  analyze: analyzeExt,
};
