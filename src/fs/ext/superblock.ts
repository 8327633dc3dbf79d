/** The ext2/3/4 superblock: the fields sparsify needs, decoded and sanity-checked. */
import { CorruptError } from '../../io/errors.js';
import { crc32cRaw } from '../../io/checksums.js';

export const SUPERBLOCK_OFFSET = 1024;
export const EXT_MAGIC = 0xef53;

export const COMPAT = {
  HAS_JOURNAL: 0x4,
  SPARSE_SUPER2: 0x200,
} as const;

export const INCOMPAT = {
  COMPRESSION: 0x1,
  FILETYPE: 0x2,
  RECOVER: 0x4,
  JOURNAL_DEV: 0x8,
  META_BG: 0x10,
  EXTENTS: 0x40,
  BIT64: 0x80,
  MMP: 0x100,
  FLEX_BG: 0x200,
  EA_INODE: 0x400,
  DIRDATA: 0x1000,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;

export const RO_COMPAT = {
  SPARSE_SUPER: 0x1,
  LARGE_FILE: 0x2,
  BTREE_DIR: 0x4,
  HUGE_FILE: 0x8,
  GDT_CSUM: 0x10,
  DIR_NLINK: 0x20,
  EXTRA_ISIZE: 0x40,
  HAS_SNAPSHOT: 0x80,
  QUOTA: 0x100,
  BIGALLOC: 0x200,
  METADATA_CSUM: 0x400,
  REPLICA: 0x800,
  READONLY: 0x1000,
  PROJECT: 0x2000,
  SHARED_BLOCKS: 0x4000,
  VERITY: 0x8000,
  ORPHAN_PRESENT: 0x10000,
} as const;

/**
 * Incompatible features whose meaning for block allocation we know. Anything else, including
 * COMPRESSION and JOURNAL_DEV (an external journal device, not a filesystem), is refused.
 * RECOVER is known but handled separately: it means the journal must be replayed first.
 */
const KNOWN_INCOMPAT =
  INCOMPAT.FILETYPE | INCOMPAT.RECOVER | INCOMPAT.META_BG | INCOMPAT.EXTENTS | INCOMPAT.BIT64 | INCOMPAT.MMP |
  INCOMPAT.FLEX_BG | INCOMPAT.EA_INODE | INCOMPAT.DIRDATA | INCOMPAT.CSUM_SEED | INCOMPAT.LARGEDIR |
  INCOMPAT.INLINE_DATA | INCOMPAT.ENCRYPT | INCOMPAT.CASEFOLD;

/**
 * Read-only-compatible features we understand. HAS_SNAPSHOT (next3 snapshots keep blocks outside
 * the bitmap), REPLICA and SHARED_BLOCKS change what the bitmap means, so they are not listed.
 */
const KNOWN_RO_COMPAT =
  RO_COMPAT.SPARSE_SUPER | RO_COMPAT.LARGE_FILE | RO_COMPAT.BTREE_DIR | RO_COMPAT.HUGE_FILE | RO_COMPAT.GDT_CSUM |
  RO_COMPAT.DIR_NLINK | RO_COMPAT.EXTRA_ISIZE | RO_COMPAT.QUOTA | RO_COMPAT.BIGALLOC | RO_COMPAT.METADATA_CSUM |
  RO_COMPAT.READONLY | RO_COMPAT.PROJECT | RO_COMPAT.VERITY | RO_COMPAT.ORPHAN_PRESENT;

export interface ExtSuperblock {
  blocksCount: number;
  firstDataBlock: number;
  blockSize: number;
  /** Blocks per allocation cluster (1 unless bigalloc). */
  clusterRatio: number;
  blocksPerGroup: number;
  clustersPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  groupCount: number;
  state: number;
  compat: number;
  incompat: number;
  roCompat: number;
  uuid: Buffer;
  label: string;
  reservedGdtBlocks: number;
  descSize: number;
  firstMetaBg: number;
  backupBgs: [number, number];
  /** Seed for metadata_csum checksums (crc32c of the UUID unless CSUM_SEED stores one). */
  csumSeed: number;
  freeBlocksCount: number;
}

function u64(lo: number, hi: number): number {
  return hi * 0x100000000 + lo;
}

/** True when the buffer (1024 bytes read at volume offset 1024) carries the ext magic. */
export function hasExtMagic(sb: Buffer): boolean {
  return sb.length >= 1024 && sb.readUInt16LE(0x38) === EXT_MAGIC;
}

export function parseSuperblock(sb: Buffer, volumeSize: number): ExtSuperblock {
  const where = `ext: superblock at 0x${SUPERBLOCK_OFFSET.toString(16)}`;
  const incompat = sb.readUInt32LE(0x60);
  const roCompat = sb.readUInt32LE(0x64);
  const logBlock = sb.readUInt32LE(0x18);
  if (logBlock > 6) throw new CorruptError(`${where}: block size 1024<<${logBlock} is not valid`);
  const blockSize = 1024 << logBlock;
  const bigalloc = (roCompat & RO_COMPAT.BIGALLOC) !== 0;
  const logCluster = sb.readUInt32LE(0x1c);
  if (bigalloc && (logCluster < logBlock || logCluster > logBlock + 16)) {
    throw new CorruptError(`${where}: cluster size 1024<<${logCluster} is not valid`);
  }
  const clusterRatio = bigalloc ? 1 << (logCluster - logBlock) : 1;
  const is64 = (incompat & INCOMPAT.BIT64) !== 0;
  const blocksCount = u64(sb.readUInt32LE(0x4), is64 ? sb.readUInt32LE(0x150) : 0);
  const firstDataBlock = sb.readUInt32LE(0x14);
  const blocksPerGroup = sb.readUInt32LE(0x20);
  const clustersPerGroup = bigalloc ? sb.readUInt32LE(0x24) : blocksPerGroup;
  const inodesPerGroup = sb.readUInt32LE(0x28);
  const revLevel = sb.readUInt32LE(0x4c);
  const inodeSize = revLevel === 0 ? 128 : sb.readUInt16LE(0x58);
  const descSize = is64 ? sb.readUInt16LE(0xfe) : 32;

  if (blocksCount === 0 || blocksCount * blockSize > volumeSize) {
    throw new CorruptError(`${where}: filesystem of ${blocksCount} blocks of ${blockSize} bytes does not fit its volume (${volumeSize} bytes)`);
  }
  if (firstDataBlock >= blocksCount || firstDataBlock > 1) throw new CorruptError(`${where}: first data block ${firstDataBlock} is not valid`);
  if (clustersPerGroup === 0 || clustersPerGroup > blockSize * 8 || clustersPerGroup * clusterRatio !== blocksPerGroup) {
    throw new CorruptError(`${where}: ${blocksPerGroup} blocks per group does not fit one bitmap block`);
  }
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) {
    throw new CorruptError(`${where}: inode size ${inodeSize} is not valid`);
  }
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw new CorruptError(`${where}: ${inodesPerGroup} inodes per group is not valid`);
  if (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) throw new CorruptError(`${where}: group descriptor size ${descSize} is not valid`);

  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  const uuid = Buffer.from(sb.subarray(0x68, 0x78));
  const labelRaw = sb.subarray(0x78, 0x88);
  const nul = labelRaw.indexOf(0);
  const csumSeed = incompat & INCOMPAT.CSUM_SEED ? sb.readUInt32LE(0x270) : crc32cRaw(0xffffffff, uuid);

  return {
    blocksCount,
    firstDataBlock,
    blockSize,
    clusterRatio,
    blocksPerGroup,
    clustersPerGroup,
    inodesPerGroup,
    inodeSize,
    groupCount,
    state: sb.readUInt16LE(0x3a),
    compat: sb.readUInt32LE(0x5c),
    incompat,
    roCompat,
    uuid,
    label: labelRaw.subarray(0, nul < 0 ? 16 : nul).toString('utf8'),
    reservedGdtBlocks: sb.readUInt16LE(0xce),
    descSize,
    firstMetaBg: sb.readUInt32LE(0x104),
    backupBgs: [sb.readUInt32LE(0x24c), sb.readUInt32LE(0x250)],
    csumSeed,
    freeBlocksCount: u64(sb.readUInt32LE(0xc), is64 ? sb.readUInt32LE(0x158) : 0),
  };
}

/** The type name blkid would give: ext4 when any ext4-only feature is on, ext3 with a journal, else ext2. */
export function extTypeName(s: ExtSuperblock): string {
  const ext3Incompat = INCOMPAT.FILETYPE | INCOMPAT.RECOVER | INCOMPAT.META_BG;
  const ext3RoCompat = RO_COMPAT.SPARSE_SUPER | RO_COMPAT.LARGE_FILE | RO_COMPAT.BTREE_DIR;
  if (s.incompat & ~ext3Incompat || s.roCompat & ~ext3RoCompat) return 'ext4';
  return s.compat & COMPAT.HAS_JOURNAL ? 'ext3' : 'ext2';
}

/** Reasons the allocation bitmaps must not be trusted as they stand; empty when they can be. */
export function distrustReasons(s: ExtSuperblock, sb: Buffer): string[] {
  const reasons: string[] = [];
  const unknownIncompat = s.incompat & ~KNOWN_INCOMPAT;
  if (unknownIncompat) reasons.push(`unknown incompatible feature flags 0x${unknownIncompat.toString(16)}`);
  const unknownRo = s.roCompat & ~KNOWN_RO_COMPAT;
  if (unknownRo) reasons.push(`unsupported read-only-compatible feature flags 0x${unknownRo.toString(16)}`);
  if (s.incompat & INCOMPAT.RECOVER) reasons.push('the journal needs recovery (the filesystem was not unmounted cleanly); run e2fsck first');
  if ((s.state & 1) === 0) reasons.push('the filesystem was not cleanly unmounted (it may be mounted in a running guest)');
  if (s.state & 2) reasons.push('the filesystem has errors recorded; run e2fsck first');
  if (s.roCompat & RO_COMPAT.METADATA_CSUM) {
    const stored = sb.readUInt32LE(0x3fc);
    const computed = crc32cRaw(0xffffffff, sb.subarray(0, 0x3fc));
    if (stored !== computed) reasons.push(`superblock checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`);
  }
  return reasons;
}
