/**
 * Is an XFS internal log clean? The log is a ring of 512-byte basic blocks whose first word is
 * stamped with the pass ("cycle") that wrote it; record headers start with 0xFEEDBABE and carry
 * the cycle in their second word (xfs_log_format.h `struct xlog_rec_header`). Like the kernel's
 * xlog_find_head/xlog_check_unmount_rec we find the head (where the cycle drops by one), make
 * sure no torn writes straddle it, and accept the log as clean only when the last record before
 * the head is a single-op record whose op header carries XLOG_UNMOUNT_TRANS.
 */
import { CorruptError, hex } from '../io/errors.js';
import type { Volume } from '../layout/volume.js';

const BB = 512;
const HEADER_MAGIC = 0xfeedbabe;
const UNMOUNT_TRANS = 0x20;
/** Largest in-core log buffer (XLOG_MAX_RECORD_BSIZE) and header cycle chunk (XLOG_HEADER_CYCLE_SIZE). */
const MAX_RECORD = 256 * 1024;
const HEADER_CYCLE_SIZE = 32 * 1024;
/** Window around the head that must be free of torn writes: 8 in-flight log buffers of 256 KiB. */
const WINDOW_BB = (8 * MAX_RECORD) / BB;

export interface LogState {
  clean: boolean;
  /** Why the log is not clean (or cannot be shown to be). */
  reason?: string;
  headBlock?: number;
  cycle?: number;
}

export async function xfsLogState(volume: Volume, logOffset: number, logBytes: number): Promise<LogState> {
  const logBB = Math.floor(logBytes / BB);
  if (logBB < 64 || logOffset % BB !== 0 || logOffset + logBytes > volume.size) {
    throw new CorruptError(`xfs: log at ${hex(logOffset)} (+${hex(logBytes)}) is malformed or lies outside the volume`);
  }
  const word0 = async (bb: number): Promise<Buffer> => volume.readAt(logOffset + bb * BB, 8);
  const cycleOf = (b: Buffer, at = 0): number => (b.readUInt32BE(at) === HEADER_MAGIC ? b.readUInt32BE(at + 4) : b.readUInt32BE(at));

  const first = cycleOf(await word0(0));
  const last = cycleOf(await word0(logBB - 1));
  if (first === 0) return { clean: false, reason: 'the log has never been written (cycle 0)' };
  let head: number;
  if (first === last) {
    head = logBB; // every block carries the same cycle: the last record ends exactly at the end
  } else if (last === first - 1) {
    let lo = 0;
    let hi = logBB - 1;
    // Invariant: cycle(lo) === first, cycle(hi) === last.
    for (let guard = 0; hi - lo > 1 && guard < 64; guard++) {
      const mid = (lo + hi) >> 1;
      const c = cycleOf(await word0(mid));
      if (c === last) hi = mid;
      else if (c === first) lo = mid;
      else return { clean: false, reason: `log block ${mid} has unexpected cycle ${c}` };
    }
    head = hi;
  } else {
    return { clean: false, reason: `log cycle numbers ${first}/${last} do not form a head` };
  }

  // Read a window of blocks ending at the head (wrapping), and one starting at it.
  const before = Math.min(WINDOW_BB, logBB);
  const winStart = (((head - before) % logBB) + logBB) % logBB;
  const win = Buffer.allocUnsafe(before * BB);
  const firstPart = Math.min(before, logBB - winStart);
  await volume.read(win.subarray(0, firstPart * BB), logOffset + winStart * BB);
  if (firstPart < before) await volume.read(win.subarray(firstPart * BB), logOffset);
  for (let i = 0; i < before; i++) {
    const b = (winStart + i) % logBB;
    const want = b < head ? first : last;
    if (cycleOf(win, i * BB) !== want) return { clean: false, reason: `torn log write near the head (block ${b})` };
  }
  if (head < logBB) {
    const after = Math.min(WINDOW_BB, logBB - head);
    const aw = await volume.readAt(logOffset + head * BB, after * BB);
    for (let i = 0; i < after; i++) {
      if (cycleOf(aw, i * BB) !== last) return { clean: false, reason: `torn log write after the head (block ${head + i})` };
    }
  }

  // The last record header before the head.
  const maxBack = Math.min(before, MAX_RECORD / BB + MAX_RECORD / HEADER_CYCLE_SIZE + 2);
  let rec = -1;
  for (let i = before - 1; i >= before - maxBack; i--) {
    if (win.readUInt32BE(i * BB) === HEADER_MAGIC) {
      rec = i;
      break;
    }
  }
  const headMod = head % logBB;
  if (rec < 0) return { clean: false, reason: 'no log record header before the head', headBlock: headMod, cycle: first };
  const h = win.subarray(rec * BB, (rec + 1) * BB);
  const recBlock = (winStart + rec) % logBB;
  const cycle = h.readUInt32BE(4);
  const version = h.readUInt32BE(8);
  const len = h.readUInt32BE(12);
  const lsnCycle = h.readUInt32BE(16);
  const lsnBlock = h.readUInt32BE(20);
  const numOps = h.readUInt32BE(40);
  const size = version === 2 ? h.readUInt32BE(320) : 0;
  if ((version !== 1 && version !== 2) || len === 0 || len > MAX_RECORD || size > MAX_RECORD || lsnCycle !== cycle || lsnBlock !== recBlock) {
    return { clean: false, reason: `log record header at block ${recBlock} is malformed`, headBlock: headMod, cycle: first };
  }
  const hblks = size > HEADER_CYCLE_SIZE ? Math.ceil(size / HEADER_CYCLE_SIZE) : 1;
  const afterRec = (recBlock + hblks + Math.ceil(len / BB)) % logBB;
  const dataIdx = rec + hblks;
  if (afterRec !== headMod || numOps !== 1 || dataIdx >= before) {
    return { clean: false, reason: 'the last log record is not an unmount record', headBlock: headMod, cycle: first };
  }
  // xlog_op_header: tid u32, len u32, clientid u8, flags u8. Byte 9 is not touched by cycle stamping.
  if ((win[dataIdx * BB + 9]! & UNMOUNT_TRANS) === 0) {
    return { clean: false, reason: 'the last log record is not an unmount record', headBlock: headMod, cycle: first };
  }
  return { clean: true, headBlock: headMod, cycle: first };
}
