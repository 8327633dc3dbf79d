/**
 * Free extents of one XFS allocation group: the AGF (sector 1 of the AG) and the by-block-number
 * free-space B+tree it roots (bnobt; xfs_format.h `struct xfs_agf`, xfs_btree.h short-pointer
 * block header). Only the bnobt is trusted as "free": AGFL blocks are reserved for btree growth
 * and stay in use as far as we are concerned.
 */
import { CorruptError, hex } from '../io/errors.js';
import { crc32c } from '../io/checksums.js';
import type { Volume } from '../layout/volume.js';
import type { XfsSuper } from './xfs-super.js';

const AGF_MAGIC = 0x58414746; // 'XAGF'
const BNO_MAGIC_V4 = 0x41425442; // 'ABTB'
const BNO_MAGIC_V5 = 0x41423342; // 'AB3B'
/** Short-pointer btree block header: 16 bytes on v4; v5 adds blkno, lsn, uuid, owner, crc. */
const HDR_V4 = 16;
const HDR_V5 = 56;
const BTREE_CRC_OFF = 52;
const AGF_CRC_OFF = 216;
/** Deeper than any real bnobt (XFS caps btree height well below this). */
const MAX_LEVELS = 12;

export interface AgFree {
  agno: number;
  /** Blocks in this AG (the last one may be short). */
  length: number;
  /** Free extents as [startBlock, endBlock) AG-relative block numbers, ascending. */
  extents: Array<{ start: number; end: number }>;
  /** agf_freeblks: what the AGF claims the extents add up to. */
  freeBlocks: number;
  /** agf_flcount: blocks parked on the AGFL (not counted as free by us). */
  flCount: number;
}

/** Blocks in AG `agno` (every AG is sb_agblocks long except possibly the last). */
export function agLength(sb: XfsSuper, agno: number): number {
  return agno < sb.agCount - 1 ? sb.agBlocks : sb.dblocks - agno * sb.agBlocks;
}

function checkV5Crc(buf: Buffer, crcOff: number, what: string): void {
  const stored = buf.readUInt32LE(crcOff);
  const copy = Buffer.from(buf);
  copy.writeUInt32LE(0, crcOff);
  if (crc32c(copy) !== stored) throw new CorruptError(`${what} has a bad CRC`);
}

/** Read the AGF and walk its bnobt. Throws CorruptError on any inconsistency. */
export async function readAgFree(volume: Volume, sb: XfsSuper, agno: number): Promise<AgFree> {
  const v5 = sb.version === 5;
  const agStart = agno * sb.agBlocks * sb.blockSize;
  const length = agLength(sb, agno);
  const agfOff = agStart + sb.sectSize;
  const agf = await volume.readAt(agfOff, sb.sectSize);
  const agfWhere = `xfs: AG ${agno} AGF at ${hex(agfOff)}`;
  if (agf.readUInt32BE(0) !== AGF_MAGIC) throw new CorruptError(`${agfWhere} has bad magic`);
  if (agf.readUInt32BE(4) !== 1) throw new CorruptError(`${agfWhere} has bad version ${agf.readUInt32BE(4)}`);
  if (agf.readUInt32BE(8) !== agno) throw new CorruptError(`${agfWhere} claims to be AG ${agf.readUInt32BE(8)}`);
  if (agf.readUInt32BE(12) !== length) throw new CorruptError(`${agfWhere} has length ${agf.readUInt32BE(12)}, expected ${length}`);
  if (v5) {
    checkV5Crc(agf, AGF_CRC_OFF, agfWhere);
    if (!agf.subarray(64, 80).equals(sb.metaUuid)) throw new CorruptError(`${agfWhere} belongs to another filesystem (uuid mismatch)`);
  }
  const root = agf.readUInt32BE(16);
  const levels = agf.readUInt32BE(28);
  const freeBlocks = agf.readUInt32BE(52);
  const flCount = agf.readUInt32BE(48);
  if (levels < 1 || levels > MAX_LEVELS) throw new CorruptError(`${agfWhere} has bad free-space btree height ${levels}`);
  // The AG header sectors (sb, AGF, AGI, AGFL) can never be free space.
  const firstData = Math.ceil((4 * sb.sectSize) / sb.blockSize);
  if (root < firstData || root >= length) throw new CorruptError(`${agfWhere} has free-space btree root ${root} outside the AG`);
  if (freeBlocks > length) throw new CorruptError(`${agfWhere} claims ${freeBlocks} free blocks in a ${length}-block AG`);

  const hdr = v5 ? HDR_V5 : HDR_V4;
  const magic = v5 ? BNO_MAGIC_V5 : BNO_MAGIC_V4;
  const leafMax = Math.floor((sb.blockSize - hdr) / 8);
  const nodeMax = Math.floor((sb.blockSize - hdr) / 12);
  const visited = new Set<number>();
  const extents: Array<{ start: number; end: number }> = [];
  let prevEnd = firstData;

  // Level by level from the root; children are queued in key order, so leaves come out ascending.
  let current = [root];
  for (let level = levels - 1; level >= 0; level--) {
    const next: number[] = [];
    for (const bno of current) {
      if (visited.has(bno)) throw new CorruptError(`xfs: AG ${agno} free-space btree visits block ${bno} twice`);
      visited.add(bno);
      const off = agStart + bno * sb.blockSize;
      const where = `xfs: AG ${agno} free-space btree block at ${hex(off)}`;
      const blk = await volume.readAt(off, sb.blockSize);
      if (blk.readUInt32BE(0) !== magic) throw new CorruptError(`${where} has bad magic`);
      if (blk.readUInt16BE(4) !== level) throw new CorruptError(`${where} has level ${blk.readUInt16BE(4)}, expected ${level}`);
      const numRecs = blk.readUInt16BE(6);
      if (v5) {
        if (Number(blk.readBigUInt64BE(16)) !== off / 512) throw new CorruptError(`${where} has wrong self address`);
        if (!blk.subarray(32, 48).equals(sb.metaUuid)) throw new CorruptError(`${where} belongs to another filesystem (uuid mismatch)`);
        if (blk.readUInt32BE(48) !== agno) throw new CorruptError(`${where} has owner ${blk.readUInt32BE(48)}, expected AG ${agno}`);
        checkV5Crc(blk, BTREE_CRC_OFF, where);
      }
      if (level > 0) {
        if (numRecs < 1 || numRecs > nodeMax) throw new CorruptError(`${where} has bad record count ${numRecs}`);
        const ptrBase = hdr + nodeMax * 8;
        for (let i = 0; i < numRecs; i++) {
          const child = blk.readUInt32BE(ptrBase + 4 * i);
          if (child < firstData || child >= length) throw new CorruptError(`${where} points to block ${child} outside the AG`);
          next.push(child);
        }
      } else {
        if (numRecs > leafMax) throw new CorruptError(`${where} has bad record count ${numRecs}`);
        for (let i = 0; i < numRecs; i++) {
          const start = blk.readUInt32BE(hdr + 8 * i);
          const count = blk.readUInt32BE(hdr + 8 * i + 4);
          if (count === 0 || start < prevEnd || start + count > length) {
            throw new CorruptError(`${where} record ${i} (${start}+${count}) is out of order or outside the AG`);
          }
          extents.push({ start, end: start + count });
          prevEnd = start + count;
        }
      }
    }
    if (next.length > length) throw new CorruptError(`xfs: AG ${agno} free-space btree is larger than the AG`);
    current = next;
  }
  return { agno, length, extents, freeBlocks, flCount };
}
