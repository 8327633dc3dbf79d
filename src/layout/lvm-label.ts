/**
 * LVM2 on-disk headers: the PV label (LABELONE + "LVM2 001" PV header), the metadata area header
 * and its raw location descriptors, and the committed metadata text in the circular buffer.
 *
 * Layout facts (lvm2 lib/format_text/layout.h, format-text.c, lib/label/label.c):
 * - The label is one 512-byte sector among the first four: id "LABELONE", sector u64 (its own
 *   sector number), crc u32 over bytes 20..511, offset u32 (of the PV header within the sector),
 *   type "LVM2 001". All little-endian.
 * - PV header: uuid[32], device size u64 (bytes), then two lists of {offset u64, size u64} (data
 *   areas, then metadata areas), each ended by an all-zero entry; offsets are bytes from PV start.
 * - Metadata area header (512 bytes at the area's start): checksum u32 over bytes 4..511, magic
 *   " LVM2 x[5A%r0N*>", version u32 = 1, start u64 (must equal the area's offset), size u64, then
 *   raw locations {offset u64, size u64, checksum u32, flags u32}: slot 0 is the committed copy.
 * - The text lives at start + offset; a copy that runs past the area's end continues right after
 *   the 512-byte header (the buffer is circular). Its checksum covers both pieces in order.
 * - Every checksum is LVM's calc_crc: reflected CRC-32 (poly 0xedb88320), initial 0xf597a6cf, no
 *   final inversion (lib/misc/crc.c).
 */
import { crc32 } from '../io/checksums.js';
import { CorruptError, hex } from '../io/errors.js';
import type { Volume } from './volume.js';

export const SECTOR = 512;
const LABEL_SCAN_SECTORS = 4;
const LABEL_ID = 'LABELONE';
const LABEL_TYPE = 'LVM2 001';
const MDA_MAGIC = ' LVM2 x[5A%r0N*>';
const MDA_HEADER_SIZE = 512;
const RAW_LOCN_IGNORED = 1;
/** Bound on one metadata text copy; real ones are a few KiB to a few MiB. */
export const MAX_METADATA_TEXT = 64 << 20;
/** Bound on disk_locn list entries: LVM writes one data area and at most two metadata areas. */
const MAX_LOCN_ENTRIES = 8;

const LVM_INITIAL_CRC = 0xf597a6cf;

/** LVM's calc_crc(initial, data): zlib's CRC-32 update without its entry/exit inversions. */
export function lvmCrc(data: Uint8Array, initial = LVM_INITIAL_CRC): number {
  return ~crc32(data, ~initial >>> 0) >>> 0;
}

export interface DiskLocn {
  offset: number;
  size: number;
}

export interface PvLabel {
  /** Byte offset of the label sector in the volume. */
  labelOffset: number;
  /** False when the label header's CRC does not match. */
  crcOk: boolean;
  /** 32 characters, no dashes. */
  uuid: string;
  deviceSize: number;
  dataAreas: DiskLocn[];
  metadataAreas: DiskLocn[];
}

export interface MetadataText {
  /** Byte offset of the metadata area in the volume. */
  areaOffset: number;
  text: string;
}

export type MetadataRead =
  | { kind: 'text'; meta: MetadataText }
  /** No VG metadata in this area (orphan PV) or the copy is flagged ignored. */
  | { kind: 'none'; why: string }
  /** The area or text failed a check; the message says which. */
  | { kind: 'bad'; why: string };

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`lvm2: ${what} ${hex(v)} is out of range`);
  return Number(v);
}

/** The label sector, if one of the first four sectors starts with LABELONE / LVM2 001. */
export async function findLabel(volume: Volume): Promise<number | null> {
  if (volume.size < LABEL_SCAN_SECTORS * SECTOR) return null;
  const head = await volume.readAt(0, LABEL_SCAN_SECTORS * SECTOR);
  for (let s = 0; s < LABEL_SCAN_SECTORS; s++) {
    const o = s * SECTOR;
    if (head.toString('latin1', o, o + 8) === LABEL_ID && head.toString('latin1', o + 24, o + 32) === LABEL_TYPE) return s;
  }
  return null;
}

function readLocnList(sec: Buffer, pos: number, what: string): { list: DiskLocn[]; next: number } {
  const list: DiskLocn[] = [];
  for (let i = 0; ; i++) {
    if (pos + 16 > SECTOR) throw new CorruptError(`lvm2: PV header ${what} list runs past the label sector`);
    if (i >= MAX_LOCN_ENTRIES) throw new CorruptError(`lvm2: PV header ${what} list has more than ${MAX_LOCN_ENTRIES} entries`);
    const offset = u64(sec, pos, `${what} offset`);
    const size = u64(sec, pos + 8, `${what} size`);
    pos += 16;
    if (offset === 0) return { list, next: pos };
    list.push({ offset, size });
  }
}

export async function readLabel(volume: Volume, sector: number): Promise<PvLabel> {
  const labelOffset = sector * SECTOR;
  const sec = await volume.readAt(labelOffset, SECTOR);
  const stored = sec.readUInt32LE(16);
  const crcOk = lvmCrc(sec.subarray(20)) === stored;
  const ownSector = u64(sec, 8, 'label sector number');
  if (ownSector !== sector) throw new CorruptError(`lvm2: label at ${hex(labelOffset)} says it is in sector ${ownSector}`);
  const hdr = sec.readUInt32LE(20);
  // uuid 32 + size 8 + at least the two list terminators.
  if (hdr < 32 || hdr + 40 + 32 > SECTOR) throw new CorruptError(`lvm2: label at ${hex(labelOffset)} has PV header offset ${hdr} outside the sector`);
  const uuid = sec.toString('latin1', hdr, hdr + 32);
  const deviceSize = u64(sec, hdr + 32, 'PV device size');
  const data = readLocnList(sec, hdr + 40, 'data area');
  const meta = readLocnList(sec, data.next, 'metadata area');
  return { labelOffset, crcOk, uuid, deviceSize, dataAreas: data.list, metadataAreas: meta.list };
}

/** Read the committed metadata text of one metadata area. */
export async function readMetadataArea(volume: Volume, area: DiskLocn): Promise<MetadataRead> {
  const at = hex(area.offset);
  if (area.size < MDA_HEADER_SIZE * 2 || area.offset + area.size > volume.size) {
    return { kind: 'bad', why: `metadata area at ${at} (size ${hex(area.size)}) does not fit the PV` };
  }
  const h = await volume.readAt(area.offset, MDA_HEADER_SIZE);
  if (lvmCrc(h.subarray(4)) !== h.readUInt32LE(0)) return { kind: 'bad', why: `metadata area header at ${at} has a bad checksum` };
  if (h.toString('latin1', 4, 20) !== MDA_MAGIC) return { kind: 'bad', why: `metadata area header at ${at} has bad magic` };
  const version = h.readUInt32LE(20);
  if (version !== 1) return { kind: 'bad', why: `metadata area header at ${at} has unknown version ${version}` };
  const start = u64(h, 24, 'metadata area start');
  const size = u64(h, 32, 'metadata area size');
  if (start !== area.offset) return { kind: 'bad', why: `metadata area header at ${at} says it starts at ${hex(start)}` };
  if (size !== area.size) return { kind: 'bad', why: `metadata area header at ${at} says its size is ${hex(size)}, the PV header ${hex(area.size)}` };
  const offset = u64(h, 40, 'metadata offset');
  const length = u64(h, 48, 'metadata size');
  const checksum = h.readUInt32LE(56);
  const flags = h.readUInt32LE(60);
  if (offset === 0 && length === 0) return { kind: 'none', why: `metadata area at ${at} holds no volume group` };
  if (flags & RAW_LOCN_IGNORED) return { kind: 'none', why: `metadata area at ${at} is marked ignored` };
  if (offset < MDA_HEADER_SIZE || offset >= size || length === 0 || length > size - MDA_HEADER_SIZE || length > MAX_METADATA_TEXT) {
    return { kind: 'bad', why: `metadata area at ${at} has a bad text location ${hex(offset)}+${hex(length)}` };
  }
  const wrap = Math.max(0, offset + length - size);
  if (wrap > offset - MDA_HEADER_SIZE) return { kind: 'bad', why: `metadata text at ${at} wraps onto itself` };
  const text = Buffer.allocUnsafe(length);
  await volume.read(text.subarray(0, length - wrap), start + offset);
  if (wrap > 0) await volume.read(text.subarray(length - wrap), start + MDA_HEADER_SIZE);
  if (lvmCrc(text) !== checksum) return { kind: 'bad', why: `metadata text at ${hex(start + offset)} has a bad checksum` };
  // The exported text ends with a NUL that the size includes.
  let end = length;
  while (end > 0 && text[end - 1] === 0) end--;
  return { kind: 'text', meta: { areaOffset: start, text: text.toString('utf8', 0, end) } };
}
