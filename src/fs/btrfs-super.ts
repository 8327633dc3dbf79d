/**
 * btrfs superblock (little-endian, 4 KiB at 64 KiB; kernel `struct btrfs_super_block`) and the
 * checksum it selects. The bootstrap chunk items in sys_chunk_array are parsed by btrfs-tree.ts.
 */
import { createHash } from 'node:crypto';
import { CorruptError, hex } from '../io/errors.js';
import { crc32c } from '../io/checksums.js';
import { xxh64 } from './btrfs-xxhash.js';

export const SUPER_OFFSET = 0x10000;
export const SUPER_SIZE = 4096;
export const BTRFS_MAGIC = Buffer.from('_BHRfS_M', 'latin1');
/** Primary and mirror superblock offsets (64 KiB, 64 MiB, 256 GiB). */
export const SUPER_MIRRORS = [0x10000, 0x4000000, 0x4000000000];
/** Bytes at the start of the device btrfs never allocates (boot loaders may live there). */
export const RESERVED_START = 1 << 20;

const INCOMPAT = {
  MIXED_BACKREF: 1n << 0n,
  DEFAULT_SUBVOL: 1n << 1n,
  MIXED_GROUPS: 1n << 2n,
  COMPRESS_LZO: 1n << 3n,
  COMPRESS_ZSTD: 1n << 4n,
  BIG_METADATA: 1n << 5n,
  EXTENDED_IREF: 1n << 6n,
  RAID56: 1n << 7n,
  SKINNY_METADATA: 1n << 8n,
  NO_HOLES: 1n << 9n,
  METADATA_UUID: 1n << 10n,
  RAID1C34: 1n << 11n,
};
/** Incompat bits whose on-disk meaning we handle; RAID56/RAID1C34 only add profiles we refuse per chunk. */
const INCOMPAT_KNOWN = Object.values(INCOMPAT).reduce((a, b) => a | b, 0n);
/** compat_ro: FREE_SPACE_TREE, FREE_SPACE_TREE_VALID, VERITY, BLOCK_GROUP_TREE. */
export const COMPAT_RO_BLOCK_GROUP_TREE = 1n << 3n;
const COMPAT_RO_KNOWN = (1n << 0n) | (1n << 1n) | (1n << 2n) | COMPAT_RO_BLOCK_GROUP_TREE;
/** Super flags that are harmless: WRITTEN, SEEDING. Anything else (ERROR, METADUMP, CHANGING_*) is not. */
const FLAGS_OK = (1n << 0n) | (1n << 32n);

export type Checksummer = (data: Buffer) => Buffer;

export interface BtrfsSuper {
  fsid: Buffer;
  /** The uuid stamped into tree block headers (metadata_uuid when that feature is set). */
  metadataUuid: Buffer;
  label: string;
  generation: bigint;
  root: number;
  rootLevel: number;
  chunkRoot: number;
  chunkRootLevel: number;
  logRoot: number;
  totalBytes: number;
  bytesUsed: number;
  numDevices: number;
  sectorSize: number;
  nodeSize: number;
  csumType: number;
  compatRo: bigint;
  incompat: bigint;
  flags: bigint;
  devId: number;
  devTotalBytes: number;
  devUuid: Buffer;
  sysChunkArray: Buffer;
  /** Reasons to keep everything found in the superblock alone (features, flags). */
  problems: string[];
  csum: Checksummer | undefined;
}

function pow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

const CSUM_NAMES = ['crc32c', 'xxhash64', 'sha256', 'blake2b'];

function checksummer(type: number): Checksummer | undefined {
  if (type === 0) {
    return (d) => {
      const out = Buffer.alloc(4);
      out.writeUInt32LE(crc32c(d));
      return out;
    };
  }
  if (type === 1) {
    return (d) => {
      const out = Buffer.alloc(8);
      out.writeBigUInt64LE(xxh64(d));
      return out;
    };
  }
  if (type === 2) return (d) => createHash('sha256').update(d).digest();
  return undefined;
}

/** Does the 32-byte csum field at the start of `block` match the checksum of the rest? */
export function checksumOk(sb: BtrfsSuper, block: Buffer): boolean {
  const sum = sb.csum!(block.subarray(0x20));
  return block.subarray(0, sum.length).equals(sum);
}

function safe(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`btrfs: superblock at ${hex(SUPER_OFFSET)} has impossible ${what} ${n}`);
  return Number(n);
}

export function parseBtrfsSuper(buf: Buffer): BtrfsSuper {
  const where = `btrfs: superblock at ${hex(SUPER_OFFSET)}`;
  if (buf.length < SUPER_SIZE || !buf.subarray(0x40, 0x48).equals(BTRFS_MAGIC)) throw new CorruptError(`${where} has bad magic`);
  const csumType = buf.readUInt16LE(0xc4);
  const csum = checksummer(csumType);
  const problems: string[] = [];
  if (!csum) {
    problems.push(`checksum type ${CSUM_NAMES[csumType] ?? csumType} is not supported, so metadata cannot be verified`);
  } else if (!buf.subarray(0, csum(Buffer.alloc(0)).length).equals(csum(buf.subarray(0x20, SUPER_SIZE)))) {
    throw new CorruptError(`${where} has a bad checksum`);
  }
  if (safe(buf.readBigUInt64LE(0x30), 'bytenr') !== SUPER_OFFSET) throw new CorruptError(`${where} records a wrong own address`);
  const sectorSize = buf.readUInt32LE(0x90);
  const nodeSize = buf.readUInt32LE(0x94);
  if (!pow2(sectorSize) || sectorSize < 512 || sectorSize > 65536) throw new CorruptError(`${where} has bad sector size ${sectorSize}`);
  if (!pow2(nodeSize) || nodeSize < sectorSize || nodeSize > 65536 || nodeSize < 4096) throw new CorruptError(`${where} has bad node size ${nodeSize}`);
  const sysSize = buf.readUInt32LE(0xa0);
  if (sysSize > 2048) throw new CorruptError(`${where} has sys_chunk_array of ${sysSize} bytes (max 2048)`);
  const rootLevel = buf[0xc6]!;
  const chunkRootLevel = buf[0xc7]!;
  if (rootLevel > 7 || chunkRootLevel > 7) throw new CorruptError(`${where} has bad tree levels`);

  const flags = buf.readBigUInt64LE(0x38);
  const compatRo = buf.readBigUInt64LE(0xb4);
  const incompat = buf.readBigUInt64LE(0xbc);
  if (incompat & ~INCOMPAT_KNOWN) problems.push(`unknown or unsupported incompat features ${hex(incompat & ~INCOMPAT_KNOWN)}`);
  if (compatRo & ~COMPAT_RO_KNOWN) problems.push(`unknown compat_ro features ${hex(compatRo & ~COMPAT_RO_KNOWN)}`);
  if (flags & ~FLAGS_OK) problems.push(`superblock flags ${hex(flags & ~FLAGS_OK)} (error, metadump or an interrupted uuid/checksum change)`);

  const fsid = Buffer.from(buf.subarray(0x20, 0x30));
  const dev = 0xc9;
  const labelRaw = buf.subarray(0x12b, 0x22b);
  const nul = labelRaw.indexOf(0);
  return {
    fsid,
    metadataUuid: incompat & INCOMPAT.METADATA_UUID ? Buffer.from(buf.subarray(0x23b, 0x24b)) : fsid,
    label: labelRaw.subarray(0, nul < 0 ? labelRaw.length : nul).toString('utf8'),
    generation: buf.readBigUInt64LE(0x48),
    root: safe(buf.readBigUInt64LE(0x50), 'root'),
    rootLevel,
    chunkRoot: safe(buf.readBigUInt64LE(0x58), 'chunk root'),
    chunkRootLevel,
    logRoot: safe(buf.readBigUInt64LE(0x60), 'log root'),
    totalBytes: safe(buf.readBigUInt64LE(0x70), 'total bytes'),
    bytesUsed: safe(buf.readBigUInt64LE(0x78), 'bytes used'),
    numDevices: safe(buf.readBigUInt64LE(0x88), 'device count'),
    sectorSize,
    nodeSize,
    csumType,
    compatRo,
    incompat,
    flags,
    devId: safe(buf.readBigUInt64LE(dev), 'devid'),
    devTotalBytes: safe(buf.readBigUInt64LE(dev + 8), 'device size'),
    devUuid: Buffer.from(buf.subarray(dev + 66, dev + 82)),
    sysChunkArray: Buffer.from(buf.subarray(0x32b, 0x32b + sysSize)),
    problems,
    csum,
  };
}

export function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
