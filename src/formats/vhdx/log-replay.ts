/**
 * Replaying a VHDX log (MS-VHDX 2.3.3; qemu block/vhdx-log.c). A current header with a non-zero
 * LogGuid says the log may hold updates that must reach their places before the file is read:
 * find the valid entries with that GUID, take the one with the highest sequence number as the
 * head, follow the active sequence from the head's Tail to the head (each entry right after the
 * previous one in the circular log, sequence numbers rising by one), and apply every descriptor
 * in order; then grow the file to LastFileOffset if it is shorter. A file shorter than the head's
 * FlushedFileOffset was truncated after the log was written: it is corrupt.
 *
 * Replay here is done in memory first (`readPendingLog` builds an overlay: the file as replaying
 * would leave it), so the image can be read and every refusal checked before anything is written;
 * `LogOverlay.writeTo` then puts it on disk. Applying the overlay is idempotent: a power cut during
 * it leaves the log in place, and the next run replays it again.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { Extents } from '../../io/extents.js';
import { BadEntry, LOG_SECTOR, decodeEntry, type FoundEntry } from './log-format.js';
import { HEADER1_AT, MiB, REGION1_AT, type StructSource, type VhdxHeader } from './structures.js';
import { writeZeroRange } from './host-space.js';

/** A log bigger than this is refused rather than read into memory (Hyper-V and qemu make 1 MiB). */
const MAX_LOG = 256 * MiB;

/** The file as the pending log would leave it: sectors written, ranges zeroed, maybe longer. */
export class LogOverlay {
  constructor(
    /** 4 KiB sectors by file offset, the last write of each. */
    readonly sectors: ReadonlyMap<number, Buffer>,
    /** Ranges the log zeroes (and no later data descriptor rewrites). */
    readonly zeros: Extents,
    /** The file's length after replay. */
    readonly size: number,
  ) {}

  /** Does replay change anything in [start, end)? */
  touches(start: number, end: number): boolean {
    if (!this.zeros.clip(start, end).isEmpty) return true;
    for (const off of this.sectors.keys()) if (off < end && off + LOG_SECTOR > start) return true;
    return false;
  }

  /** Read [offset, offset+buf.length) as it will be after replay. */
  async read(file: BlockFile, buf: Buffer, offset: number): Promise<void> {
    await file.readZeroPadded(buf, offset);
    const end = offset + buf.length;
    for (const z of this.zeros.clip(offset, end)) buf.fill(0, z.start - offset, z.end - offset);
    for (const [off, data] of this.sectors) {
      if (off >= end || off + LOG_SECTOR <= offset) continue;
      const from = Math.max(off, offset);
      const to = Math.min(off + LOG_SECTOR, end);
      data.copy(buf, from - offset, from - off, to - off);
    }
  }

  /** A StructSource reading through this overlay. */
  source(file: BlockFile): StructSource {
    return {
      size: this.size,
      read: async (buf, offset, what) => {
        if (offset < 0 || offset + buf.length > this.size) {
          throw new SparsifyError(`${file.path}: ${what} at ${hex(offset)} (+${buf.length}) lies beyond end of file (size ${hex(this.size)}, after log replay)`);
        }
        await this.read(file, buf, offset);
      },
    };
  }

  /** Put the replay on disk (the caller makes it durable): grow the file, zero, then write the sectors. */
  async writeTo(file: BlockFile): Promise<void> {
    if (file.size < this.size) await file.truncate(this.size);
    for (const z of this.zeros) await writeZeroRange(file, z.start, z.end - z.start);
    const offsets = [...this.sectors.keys()].sort((a, b) => a - b);
    let i = 0;
    while (i < offsets.length) {
      let j = i + 1;
      while (j < offsets.length && offsets[j] === offsets[j - 1]! + LOG_SECTOR) j++;
      await file.write(Buffer.concat(offsets.slice(i, j).map((o) => this.sectors.get(o)!)), offsets[i]!);
      i = j;
    }
  }
}

export interface PendingLog {
  /** The log GUID the entries carry. */
  guid: Buffer;
  /** The active sequence, tail first (empty: the GUID is set but no entry is valid). */
  entries: FoundEntry[];
  overlay: LogOverlay;
}

/** Where the log lies, checked against the file. */
export function logRegion(file: BlockFile, h: VhdxHeader): { offset: number; length: number } {
  const where = `vhdx: ${file.path}: header at ${hex(h.at)}`;
  if (h.logVersion !== 0) throw new SparsifyError(`${where}: unsupported log version ${h.logVersion}`);
  if (h.logOffset < MiB || h.logOffset % MiB !== 0 || h.logLength % MiB !== 0) {
    throw new CorruptError(`${where}: the log (${hex(h.logOffset)}+${hex(h.logLength)}) is not 1 MiB-aligned past the header section`);
  }
  if (h.logOffset + h.logLength > file.size) throw new CorruptError(`${where}: the log (${hex(h.logOffset)}+${hex(h.logLength)}) lies beyond end of file (size ${hex(file.size)})`);
  if (h.logLength > MAX_LOG) throw new SparsifyError(`${where}: a ${h.logLength}-byte log is larger than this tool replays (${MAX_LOG})`);
  return { offset: h.logOffset, length: h.logLength };
}

/**
 * The log the current header asks to replay, validated and turned into an overlay; undefined when
 * the LogGuid is zero (or the log length is, as qemu reads it: no log). Reads only.
 */
export async function readPendingLog(file: BlockFile, h: VhdxHeader): Promise<PendingLog | undefined> {
  if (h.logGuidZero || h.logLength === 0) return undefined;
  const region = logRegion(file, h);
  const log = Buffer.alloc(region.length);
  await file.readExact(log, region.offset, 'vhdx log');
  const where = (at: number): string => `vhdx: ${file.path}: log entry at ${hex(region.offset + at)}`;

  const found = new Map<number, FoundEntry>();
  for (let at = 0; at < log.length; at += LOG_SECTOR) {
    try {
      const e = decodeEntry(log, at, h.logGuid);
      if (e) found.set(at, e);
    } catch (err) {
      if (err instanceof BadEntry) throw new CorruptError(`${where(at)} is corrupt: ${err.message}`);
      throw err;
    }
  }
  const empty = { guid: h.logGuid, entries: [], overlay: new LogOverlay(new Map(), new Extents(), file.size) };
  if (found.size === 0) return empty;

  let head: FoundEntry | undefined;
  for (const e of found.values()) {
    if (head && e.sequence === head.sequence) throw new CorruptError(`${where(e.at)} has the same sequence number as the entry at ${hex(region.offset + head.at)}`);
    if (!head || e.sequence > head.sequence) head = e;
  }
  // The active sequence: from the head's tail, entry after entry, up to the head.
  const entries: FoundEntry[] = [];
  let at = head!.tail;
  for (let steps = 0; ; steps++) {
    const e = found.get(at);
    const prev = entries.at(-1);
    if (!e || steps > found.size || (prev && e.sequence !== prev.sequence + 1n)) {
      throw new CorruptError(`${where(head!.at)}: the active sequence from its tail at ${hex(region.offset + head!.tail)} is broken at ${hex(region.offset + at)}`);
    }
    entries.push(e);
    if (e === head) break;
    at = (at + e.length) % log.length;
  }
  return { guid: h.logGuid, entries, overlay: buildOverlay(file, h, region, entries, where) };
}

function buildOverlay(
  file: BlockFile,
  h: VhdxHeader,
  region: { offset: number; length: number },
  entries: FoundEntry[],
  where: (at: number) => string,
): LogOverlay {
  const head = entries.at(-1)!;
  if (head.flushedFileOffset > file.size) {
    throw new CorruptError(`${where(head.at)}: the file (size ${hex(file.size)}) is shorter than the log's flushed file offset ${hex(head.flushedFileOffset)}: it was truncated`);
  }
  const size = Math.max(file.size, Math.ceil(head.lastFileOffset / MiB) * MiB);
  if (file.isBlockDevice && size > file.size) {
    throw new CorruptError(`${where(head.at)}: the log's last file offset ${hex(head.lastFileOffset)} lies beyond the end of the device (${hex(file.size)})`);
  }
  // Nothing may land on the headers (the log cannot update them) or on the log itself.
  const forbidden = Extents.of(HEADER1_AT, REGION1_AT).union(Extents.of(region.offset, region.offset + region.length));
  const sectors = new Map<number, Buffer>();
  let zeros = new Extents();
  for (const e of entries) {
    e.descriptors.forEach((d, i) => {
      const len = d.kind === 'data' ? LOG_SECTOR : d.length;
      const target = Extents.of(d.fileOffset, d.fileOffset + len);
      if (d.fileOffset + len > size || !target.intersect(forbidden).isEmpty) {
        throw new CorruptError(`${where(e.at)}: descriptor ${i} targets ${hex(d.fileOffset)}+${hex(len)}, ${d.fileOffset + len > size ? `beyond end of file (size ${hex(size)})` : 'the headers or the log itself'}`);
      }
      if (d.kind === 'data') {
        sectors.set(d.fileOffset, d.data);
        zeros = zeros.subtract(target);
      } else {
        for (const off of [...sectors.keys()]) if (off >= d.fileOffset && off < d.fileOffset + len) sectors.delete(off);
        zeros = zeros.union(target);
      }
    });
  }
  return new LogOverlay(sectors, zeros, size);
}
