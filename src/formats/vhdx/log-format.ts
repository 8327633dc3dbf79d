/**
 * The VHDX log's on-disk entries (MS-VHDX 2.3; qemu block/vhdx-log.c), little-endian, in 4 KiB
 * log sectors inside the circular log region:
 *
 *   entry header (64 bytes): "loge", CRC-32C, EntryLength, Tail, SequenceNumber (u64),
 *     DescriptorCount, reserved, LogGuid (16), FlushedFileOffset (u64), LastFileOffset (u64);
 *   descriptors (32 bytes each), after the header in the first sector and filling further sectors:
 *     data "desc": TrailingBytes (4), LeadingBytes (8), FileOffset (u64), SequenceNumber (u64);
 *     zero "zero": reserved (4), ZeroLength (u64), FileOffset (u64), SequenceNumber (u64);
 *   one data sector per data descriptor: "data", SequenceHigh (u32), 4084 bytes, SequenceLow (u32).
 *     The 4 KiB written to FileOffset is LeadingBytes + those 4084 bytes + TrailingBytes.
 *
 * The CRC-32C covers the whole entry (EntryLength bytes) with its own field taken as zero. An entry
 * is only valid with the log GUID of the current header, a non-zero sequence number, and every
 * descriptor and data sector carrying the entry's sequence number: a torn entry fails the CRC and
 * is simply not there. An entry whose CRC holds but whose contents do not is a corrupt log.
 */
import { crc32cRaw } from '../../io/checksums.js';

export const LOG_SECTOR = 4096;
export const ENTRY_HEADER_SIZE = 64;
export const DESCRIPTOR_SIZE = 32;
const DATA_BYTES = 4084;

/** Sectors holding the header and `count` descriptors (never 0). */
export function descriptorSectors(count: number): number {
  return Math.ceil((ENTRY_HEADER_SIZE + count * DESCRIPTOR_SIZE) / LOG_SECTOR);
}

/** The most 4 KiB data sectors one entry can carry in a log of `logLength` bytes. */
export function maxSectorsPerEntry(logLength: number): number {
  const total = Math.floor(logLength / LOG_SECTOR);
  let n = total - 1;
  while (n > 0 && descriptorSectors(n) + n > total) n--;
  return n;
}

/** One change an entry describes: 4 KiB of data, or zeros over `length` bytes. */
export type LogDescriptor =
  | { kind: 'data'; fileOffset: number; data: Buffer }
  | { kind: 'zero'; fileOffset: number; length: number };

export interface LogEntry {
  sequence: bigint;
  /** Log offset of the oldest entry still needed (this entry's own offset when all before it are applied). */
  tail: number;
  flushedFileOffset: number;
  lastFileOffset: number;
  descriptors: LogDescriptor[];
}

/** The entry as it is written to the log: a whole number of 4 KiB sectors, CRC filled in. */
export function encodeEntry(guid: Buffer, e: LogEntry): Buffer {
  const data = e.descriptors.filter((d): d is Extract<LogDescriptor, { kind: 'data' }> => d.kind === 'data');
  const dsec = descriptorSectors(e.descriptors.length);
  const out = Buffer.alloc((dsec + data.length) * LOG_SECTOR);
  out.write('loge', 0, 'latin1');
  out.writeUInt32LE(out.length, 8);
  out.writeUInt32LE(e.tail, 12);
  out.writeBigUInt64LE(e.sequence, 16);
  out.writeUInt32LE(e.descriptors.length, 24);
  guid.copy(out, 32);
  out.writeBigUInt64LE(BigInt(e.flushedFileOffset), 48);
  out.writeBigUInt64LE(BigInt(e.lastFileOffset), 56);
  let k = 0;
  e.descriptors.forEach((d, i) => {
    const at = ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE;
    if (d.kind === 'zero') {
      out.write('zero', at, 'latin1');
      out.writeBigUInt64LE(BigInt(d.length), at + 8);
    } else {
      if (d.data.length !== LOG_SECTOR) throw new Error('vhdx log: a data descriptor carries exactly 4 KiB');
      out.write('desc', at, 'latin1');
      d.data.copy(out, at + 4, LOG_SECTOR - 4, LOG_SECTOR); // trailing bytes
      d.data.copy(out, at + 8, 0, 8); // leading bytes
      const s = (dsec + k++) * LOG_SECTOR;
      out.write('data', s, 'latin1');
      out.writeUInt32LE(Number(e.sequence >> 32n), s + 4);
      d.data.copy(out, s + 8, 8, 8 + DATA_BYTES);
      out.writeUInt32LE(Number(e.sequence & 0xffffffffn), s + 4092);
    }
    out.writeBigUInt64LE(BigInt(d.fileOffset), at + 16);
    out.writeBigUInt64LE(e.sequence, at + 24);
  });
  out.writeUInt32LE(~crc32cRaw(0xffffffff, out) >>> 0, 4);
  return out;
}

/** An entry found in the log: where, how long, and what it says. */
export interface FoundEntry extends LogEntry {
  /** Offset inside the log region. */
  at: number;
  length: number;
}

/** Thrown (with a reason) for an entry whose CRC holds but whose contents are inconsistent. */
export class BadEntry extends Error {}

/**
 * Read the entry at log offset `at` from the whole log `log` (a circular buffer: an entry may wrap
 * to the start). Undefined when there is no valid entry there (no signature, another log GUID, a
 * bad CRC: free space, an old entry or a torn write). Throws BadEntry for a corrupt one.
 */
export function decodeEntry(log: Buffer, at: number, guid: Buffer): FoundEntry | undefined {
  const L = log.length;
  if (at % LOG_SECTOR !== 0 || at + ENTRY_HEADER_SIZE > L) return undefined;
  const h = log.subarray(at, at + ENTRY_HEADER_SIZE);
  if (h.toString('latin1', 0, 4) !== 'loge' || !h.subarray(32, 48).equals(guid)) return undefined;
  const length = h.readUInt32LE(8);
  const count = h.readUInt32LE(24);
  const sequence = h.readBigUInt64LE(16);
  if (length === 0 || length % LOG_SECTOR !== 0 || length > L || sequence === 0n) return undefined;
  if (count > (length - ENTRY_HEADER_SIZE) / DESCRIPTOR_SIZE || descriptorSectors(count) * LOG_SECTOR > length) return undefined;
  // The entry's bytes in order, unwrapping the circular buffer.
  const entry = at + length <= L ? log.subarray(at, at + length) : Buffer.concat([log.subarray(at), log.subarray(0, at + length - L)]);
  const stored = entry.readUInt32LE(4);
  let crc = crc32cRaw(0xffffffff, entry.subarray(0, 4));
  crc = crc32cRaw(crc, Buffer.alloc(4));
  crc = ~crc32cRaw(crc, entry.subarray(8)) >>> 0;
  if (crc !== stored) return undefined;

  // The CRC holds: from here on, anything wrong is a corrupt log, not a torn write.
  const tail = entry.readUInt32LE(12);
  if (tail % LOG_SECTOR !== 0 || tail >= L) throw new BadEntry(`its tail ${tail} is not a log sector offset`);
  const dsec = descriptorSectors(count);
  const descriptors: LogDescriptor[] = [];
  let dataSector = dsec;
  for (let i = 0; i < count; i++) {
    const d = ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE;
    const sig = entry.toString('latin1', d, d + 4);
    const fileOffset = Number(entry.readBigUInt64LE(d + 16));
    if (entry.readBigUInt64LE(d + 24) !== sequence) throw new BadEntry(`descriptor ${i} has another sequence number`);
    if (!Number.isSafeInteger(fileOffset) || fileOffset % LOG_SECTOR !== 0) throw new BadEntry(`descriptor ${i} targets an unaligned or out-of-range file offset`);
    if (sig === 'zero') {
      const len = Number(entry.readBigUInt64LE(d + 8));
      if (!Number.isSafeInteger(len) || len === 0 || len % LOG_SECTOR !== 0) throw new BadEntry(`zero descriptor ${i} has length ${len}`);
      descriptors.push({ kind: 'zero', fileOffset, length: len });
    } else if (sig === 'desc') {
      const s = dataSector++ * LOG_SECTOR;
      if (s + LOG_SECTOR > length) throw new BadEntry(`data descriptor ${i} has no data sector inside the entry`);
      const sector = entry.subarray(s, s + LOG_SECTOR);
      const seq = (BigInt(sector.readUInt32LE(4)) << 32n) | BigInt(sector.readUInt32LE(4092));
      if (sector.toString('latin1', 0, 4) !== 'data' || seq !== sequence) throw new BadEntry(`the data sector of descriptor ${i} has a bad signature or sequence number`);
      const data = Buffer.alloc(LOG_SECTOR);
      entry.copy(data, 0, d + 8, d + 16);
      sector.copy(data, 8, 8, 8 + DATA_BYTES);
      entry.copy(data, LOG_SECTOR - 4, d + 4, d + 8);
      descriptors.push({ kind: 'data', fileOffset, data });
    } else {
      throw new BadEntry(`descriptor ${i} has an unknown signature`);
    }
  }
  const flushedFileOffset = Number(entry.readBigUInt64LE(48));
  const lastFileOffset = Number(entry.readBigUInt64LE(56));
  if (!Number.isSafeInteger(flushedFileOffset) || !Number.isSafeInteger(lastFileOffset)) throw new BadEntry('its file offsets are out of range');
  return { at, length, sequence, tail, flushedFileOffset, lastFileOffset, descriptors };
}
