/**
 * XFS (v4 and v5) free-space reader.
 *
 * Free space is exactly what each allocation group's by-block-number free-space btree lists.
 * The internal log, AG headers, AGFL blocks and all btrees are allocated, so they never appear
 * there. Trust requires: known feature bits, a clean log (unmount record at the head), every
 * v5 CRC and magic right, and every AG's extents adding up to its agf_freeblks.
 */
import { Extents, ExtentsBuilder } from '../io/extents.js';
import { CorruptError, hex } from '../io/errors.js';
import type { Volume } from '../layout/volume.js';
import type { FsAnalysis, FsReader } from './types.js';
import { XFS_SB_MAGIC, V5_INCOMPAT_NEEDSREPAIR, fsbToByte, formatUuid, parseXfsSuper, type XfsSuper } from './xfs-super.js';
import { readAgFree } from './xfs-bnobt.js';
import { xfsLogState } from './xfs-log.js';

async function readSuper(volume: Volume): Promise<XfsSuper> {
  if (volume.size < 4096) throw new CorruptError(`xfs: volume of ${volume.size} bytes is too small`);
  const first = await volume.readAt(0, 512);
  const sectSize = first.readUInt16BE(102);
  const len = sectSize >= 512 && sectSize <= 32768 && sectSize <= volume.size ? sectSize : 512;
  return parseXfsSuper(len === 512 ? first : await volume.readAt(0, len));
}

export const xfsReader: FsReader = {
  name: 'xfs',

  async probe(volume: Volume): Promise<boolean> {
    try {
      if (volume.size < 4096) return false;
      return (await volume.readAt(0, 4)).readUInt32BE(0) === XFS_SB_MAGIC;
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume): Promise<FsAnalysis> {
    const sb = await readSuper(volume);
    const fsBytes = sb.dblocks * sb.blockSize;
    if (fsBytes > volume.size) {
      throw new CorruptError(`xfs: filesystem of ${hex(fsBytes)} bytes is larger than its volume (${hex(volume.size)}); image truncated?`);
    }
    const result: FsAnalysis = {
      type: 'xfs',
      label: sb.label || undefined,
      uuid: formatUuid(sb.uuid),
      blockSize: sb.blockSize,
      size: fsBytes,
      usedBytes: fsBytes,
      freeBytes: 0,
      free: new Extents(),
      trusted: false,
      warnings: [],
      details: {
        version: sb.version,
        agCount: sb.agCount,
        agBlocks: sb.agBlocks,
        sectorSize: sb.sectSize,
        log: sb.logStart !== 0 ? 'internal' : 'external',
      },
    };
    const keep = (why: string): FsAnalysis => {
      result.warnings.push(why);
      return result;
    };

    if (sb.inProgress) return keep('xfs: mkfs did not finish (sb_inprogress set); keeping the filesystem whole');
    if (sb.unknownFeatures.length) return keep(`xfs: unknown feature bits (${sb.unknownFeatures.join(', ')}); keeping the filesystem whole`);
    if (sb.incompat & V5_INCOMPAT_NEEDSREPAIR) return keep('xfs: filesystem is marked as needing repair; keeping it whole');
    if (sb.rblocks > 0) result.info = ['xfs: realtime section lives on another device and is left alone'];

    if (sb.logStart === 0) return keep('xfs: the log is on an external device, so its state is unknown; keeping the filesystem whole');
    const logOff = fsbToByte(sb, sb.logStart);
    const logBytes = sb.logBlocks * sb.blockSize;
    if (logBytes === 0 || logOff + logBytes > fsBytes) throw new CorruptError(`xfs: internal log at ${hex(logOff)} lies outside the filesystem`);
    const log = await xfsLogState(volume, logOff, logBytes);
    result.details!.logClean = log.clean;
    if (!log.clean) return keep(`xfs: the log is dirty (${log.reason}); it needs replay by mounting or xfs_repair, keeping the filesystem whole`);

    const builder = new ExtentsBuilder();
    let freeBlocks = 0;
    for (let agno = 0; agno < sb.agCount; agno++) {
      const ag = await readAgFree(volume, sb, agno);
      let sum = 0;
      const agBase = agno * sb.agBlocks * sb.blockSize;
      for (const e of ag.extents) {
        sum += e.end - e.start;
        const s = agBase + e.start * sb.blockSize;
        const t = agBase + e.end * sb.blockSize;
        if (s < logOff + logBytes && t > logOff) throw new CorruptError(`xfs: AG ${agno} free extent at ${hex(s)} overlaps the log`);
        builder.add(s, t);
      }
      if (sum !== ag.freeBlocks) {
        return keep(`xfs: AG ${agno} free-space btree holds ${sum} blocks but its AGF says ${ag.freeBlocks}; keeping the filesystem whole`);
      }
      freeBlocks += sum;
    }
    const free = builder.build();
    result.free = free;
    result.freeBytes = free.total();
    result.usedBytes = fsBytes - result.freeBytes;
    result.trusted = true;
    result.details!.freeBlocks = freeBlocks;
    return result;
  },
};
