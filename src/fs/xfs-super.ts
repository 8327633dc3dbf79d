/**
 * XFS superblock (big-endian, sector 0 of AG 0; xfs_format.h `struct xfs_dsb`): geometry, feature
 * bits and the log's location. Everything the free-space walk needs is validated here once.
 */
import { CorruptError, hex } from '../io/errors.js';
import { crc32c } from '../io/checksums.js';

export const XFS_SB_MAGIC = 0x58465342; // 'XFSB'

/** v4 sb_versionnum feature bits we understand (all defined ones). */
const V4_VERSION_BITS = 0xfff0;
/** v4 sb_features2 bits: LAZYSBCOUNT, ATTR2, PARENT, PROJID32, CRC, FTYPE. */
const V4_FEATURES2_KNOWN = 0x02 | 0x08 | 0x10 | 0x80 | 0x100 | 0x200;
/** v5 ro-compat: FINOBT, RMAPBT, REFLINK, INOBTCNT. None changes what the bnobt means. */
const V5_RO_COMPAT_KNOWN = 0x1 | 0x2 | 0x4 | 0x8;
/** v5 incompat: FTYPE, SPINODES, META_UUID, BIGTIME, NEEDSREPAIR, NREXT64, EXCHRANGE, PARENT. */
const V5_INCOMPAT_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80;
export const V5_INCOMPAT_META_UUID = 0x4;
export const V5_INCOMPAT_NEEDSREPAIR = 0x10;
/** v5 log-incompat: XATTRS (logged extended attributes). */
const V5_LOG_INCOMPAT_KNOWN = 0x1;

export interface XfsSuper {
  version: 4 | 5;
  blockSize: number;
  sectSize: number;
  dblocks: number;
  rblocks: number;
  agBlocks: number;
  agCount: number;
  agBlkLog: number;
  logStart: number;
  logBlocks: number;
  logSectSize: number;
  fdblocks: number;
  inProgress: boolean;
  uuid: Buffer;
  /** The uuid stamped into v5 metadata blocks (sb_meta_uuid when META_UUID is set). */
  metaUuid: Buffer;
  label: string;
  versionNum: number;
  features2: number;
  compat: number;
  roCompat: number;
  incompat: number;
  logIncompat: number;
  /** Feature bits we do not know, as text; non-empty means "keep everything". */
  unknownFeatures: string[];
}

/** Parse and validate the primary superblock from its first sector. Throws CorruptError. */
export function parseXfsSuper(buf: Buffer): XfsSuper {
  const where = 'xfs: superblock at 0x0';
  if (buf.length < 512 || buf.readUInt32BE(0) !== XFS_SB_MAGIC) throw new CorruptError(`${where} has bad magic`);
  const blockSize = buf.readUInt32BE(4);
  const versionNum = buf.readUInt16BE(100);
  const version = versionNum & 0xf;
  const sectSize = buf.readUInt16BE(102);
  const blockLog = buf[120]!;
  const sectLog = buf[121]!;
  const agBlkLog = buf[124]!;
  if (version !== 4 && version !== 5) throw new CorruptError(`${where} has unsupported version ${version}`);
  if (blockLog < 9 || blockLog > 16 || blockSize !== 1 << blockLog) throw new CorruptError(`${where} has bad block size ${blockSize}`);
  if (sectLog < 9 || sectLog > 15 || sectSize !== 1 << sectLog || sectSize > blockSize) {
    throw new CorruptError(`${where} has bad sector size ${sectSize}`);
  }
  const dblocks = Number(buf.readBigUInt64BE(8));
  const agBlocks = buf.readUInt32BE(84);
  const agCount = buf.readUInt32BE(88);
  if (agBlocks < 16 || agBlkLog > 31 || agBlocks > 2 ** agBlkLog || agBlocks <= 2 ** (agBlkLog - 1)) {
    throw new CorruptError(`${where} has bad AG size ${agBlocks} (log ${agBlkLog})`);
  }
  if (agCount < 1 || dblocks > agCount * agBlocks || dblocks <= (agCount - 1) * agBlocks) {
    throw new CorruptError(`${where}: ${dblocks} blocks do not fit ${agCount} AGs of ${agBlocks} blocks`);
  }
  if (!Number.isSafeInteger(dblocks * blockSize)) throw new CorruptError(`${where} has impossible size`);

  const features2 = buf.readUInt32BE(200);
  const v5 = version === 5;
  // v5 fields live past byte 208; the sector always holds them.
  const compat = v5 ? buf.readUInt32BE(208) : 0;
  const roCompat = v5 ? buf.readUInt32BE(212) : 0;
  const incompat = v5 ? buf.readUInt32BE(216) : 0;
  const logIncompat = v5 ? buf.readUInt32BE(220) : 0;

  if (buf.length < sectSize) throw new CorruptError(`${where}: sector of ${sectSize} bytes is truncated`);
  if (v5) {
    const stored = buf.readUInt32LE(224);
    const copy = Buffer.from(buf.subarray(0, sectSize));
    copy.writeUInt32LE(0, 224);
    if (crc32c(copy) !== stored) throw new CorruptError(`${where} has a bad CRC`);
  }

  const unknownFeatures: string[] = [];
  if (!v5) {
    if (versionNum & ~(V4_VERSION_BITS | 0xf) & 0xffff) unknownFeatures.push(`versionnum ${hex(versionNum)}`);
    if (features2 & ~V4_FEATURES2_KNOWN) unknownFeatures.push(`features2 ${hex(features2 & ~V4_FEATURES2_KNOWN)}`);
  } else {
    if (roCompat & ~V5_RO_COMPAT_KNOWN) unknownFeatures.push(`ro-compat ${hex(roCompat & ~V5_RO_COMPAT_KNOWN)}`);
    if (incompat & ~V5_INCOMPAT_KNOWN) unknownFeatures.push(`incompat ${hex(incompat & ~V5_INCOMPAT_KNOWN)}`);
    if (logIncompat & ~V5_LOG_INCOMPAT_KNOWN) unknownFeatures.push(`log-incompat ${hex(logIncompat & ~V5_LOG_INCOMPAT_KNOWN)}`);
  }

  const labelRaw = buf.subarray(108, 120);
  const nul = labelRaw.indexOf(0);
  const uuid = Buffer.from(buf.subarray(32, 48));
  const metaUuid = v5 && incompat & V5_INCOMPAT_META_UUID ? Buffer.from(buf.subarray(248, 264)) : uuid;
  return {
    version,
    blockSize,
    sectSize,
    dblocks,
    rblocks: Number(buf.readBigUInt64BE(16)),
    agBlocks,
    agCount,
    agBlkLog,
    logStart: Number(buf.readBigUInt64BE(48)),
    logBlocks: buf.readUInt32BE(96),
    logSectSize: buf.readUInt16BE(194) || 512,
    fdblocks: Number(buf.readBigUInt64BE(144)),
    inProgress: buf[126] !== 0,
    uuid,
    metaUuid,
    label: labelRaw.subarray(0, nul < 0 ? 12 : nul).toString('latin1'),
    versionNum,
    features2,
    compat,
    roCompat,
    incompat,
    logIncompat,
    unknownFeatures,
  };
}

/** Byte offset in the data device of an AG-encoded filesystem block number (agno << agblklog | agbno). */
export function fsbToByte(sb: XfsSuper, fsb: number): number {
  const agno = Math.floor(fsb / 2 ** sb.agBlkLog);
  const agbno = fsb % 2 ** sb.agBlkLog;
  return (agno * sb.agBlocks + agbno) * sb.blockSize;
}

export function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
