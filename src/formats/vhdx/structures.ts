/**
 * VHDX on-disk structures (MS-VHDX, little-endian): file identifier, the two headers (CRC-32C,
 * highest sequence number wins), the region table (BAT and metadata regions) and the metadata table.
 */
import { crc32c } from '../../io/checksums.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import type { BlockFile } from '../../io/file.js';
import { allZero, u64le } from '../common/bytes.js';

export const KiB = 1024;
export const MiB = 1 << 20;
export const HEADER1_AT = 64 * KiB;
export const HEADER2_AT = 128 * KiB;
export const REGION1_AT = 192 * KiB;
export const REGION2_AT = 256 * KiB;
export const HEADER_SIZE = 4 * KiB;
export const REGION_SIZE = 64 * KiB;
export const SIGNATURE = 'vhdxfile';

/** GUID text to its on-disk form: first three fields little-endian, the rest as bytes. */
export function guid(s: string): Buffer {
  const h = s.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

export const BAT_GUID = guid('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_GUID = guid('8B7CA206-4790-4B9A-B8FE-575F050F886E');
export const FILE_PARAMETERS = guid('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE = guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const PAGE83_DATA = guid('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE = guid('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE = guid('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR = guid('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');

/** CRC-32C of `buf` with its 4-byte checksum field at `at` taken as zero. */
export function vhdxCrc(buf: Buffer, at: number): number {
  const copy = Buffer.from(buf);
  copy.writeUInt32LE(0, at);
  return crc32c(copy);
}

export interface VhdxHeader {
  sequence: bigint;
  logGuidZero: boolean;
  version: number;
  logLength: number;
  logOffset: number;
  /** The log GUID as stored (16 bytes); all zero when no log is in use. */
  logGuid: Buffer;
  logVersion: number;
  /** Where this header lies (0x10000 or 0x20000) and its whole 4 KiB, for header updates. */
  at: number;
  raw: Buffer;
}

function parseHeader(b: Buffer, path: string, at: number): VhdxHeader | undefined {
  if (b.toString('latin1', 0, 4) !== 'head') return undefined;
  if (b.readUInt32LE(4) !== vhdxCrc(b, 4)) return undefined;
  return {
    sequence: b.readBigUInt64LE(8),
    logGuidZero: allZero(b.subarray(48, 64)),
    version: b.readUInt16LE(66),
    logLength: b.readUInt32LE(68),
    logOffset: u64le(b, 72, `vhdx: ${path}: header at ${hex(at)} log offset`),
    logGuid: Buffer.from(b.subarray(48, 64)),
    logVersion: b.readUInt16LE(64),
    at,
    raw: b,
  };
}

/** Both header slots (undefined where invalid) and the current header, log or no log. */
export async function readHeaderPair(file: BlockFile): Promise<{ current: VhdxHeader; slots: Array<VhdxHeader | undefined> }> {
  const slots: Array<VhdxHeader | undefined> = [];
  for (const at of [HEADER1_AT, HEADER2_AT]) {
    const b = Buffer.alloc(HEADER_SIZE);
    await file.readExact(b, at, 'vhdx header');
    slots.push(parseHeader(b, file.path, at));
  }
  const found = slots.filter((h): h is VhdxHeader => h !== undefined);
  if (found.length === 0) throw new CorruptError(`vhdx: ${file.path}: neither header (at 0x10000, 0x20000) has a valid signature and CRC-32C`);
  const current = found.reduce((a, b) => (b.sequence > a.sequence ? b : a));
  if (current.version !== 1) throw new SparsifyError(`vhdx: ${file.path}: unsupported header version ${current.version}`);
  return { current, slots };
}

/** The current header: the valid one with the higher sequence number. */
export async function readHeaders(file: BlockFile): Promise<VhdxHeader> {
  const h = (await readHeaderPair(file)).current;
  if (!h.logGuidZero) {
    throw new SparsifyError(
      `vhdx: ${file.path}: the log has entries that must be replayed first (non-zero log GUID); ` +
        `run 'qemu-img check -r all' on it or open it once in Hyper-V`,
    );
  }
  return h;
}

export interface Region {
  offset: number;
  length: number;
}

/**
 * Where the structures are read from: the file itself, or the file as replaying a pending log
 * would leave it (log-replay.ts), with the size it would then have.
 */
export interface StructSource {
  readonly size: number;
  read(buf: Buffer, offset: number, what: string): Promise<void>;
}

export function fileSource(file: BlockFile): StructSource {
  return { size: file.size, read: (buf, offset, what) => file.readExact(buf, offset, what) };
}

export async function readRegions(
  file: BlockFile,
  src: StructSource = fileSource(file),
): Promise<{ bat: Region; metadata: Region; others: Region[] }> {
  let lastErr = '';
  for (const at of [REGION1_AT, REGION2_AT]) {
    const b = Buffer.alloc(REGION_SIZE);
    await src.read(b, at, 'vhdx region table');
    if (b.toString('latin1', 0, 4) !== 'regi' || b.readUInt32LE(4) !== vhdxCrc(b, 4)) {
      lastErr = `region table at ${hex(at)} has a bad signature or CRC-32C`;
      continue;
    }
    const count = b.readUInt32LE(8);
    if (count > 2047) throw new CorruptError(`vhdx: ${file.path}: region table at ${hex(at)} has ${count} entries`);
    let bat: Region | undefined;
    let metadata: Region | undefined;
    const others: Region[] = [];
    for (let i = 0; i < count; i++) {
      const e = 16 + i * 32;
      const id = b.subarray(e, e + 16);
      const r: Region = { offset: u64le(b, e + 16, `vhdx: ${file.path}: region ${i} offset`), length: b.readUInt32LE(e + 24) };
      const required = b.readUInt32LE(e + 28) & 1;
      if (r.offset % MiB !== 0 || r.offset < MiB || r.offset + r.length > src.size) {
        throw new CorruptError(`vhdx: ${file.path}: region ${i} in table at ${hex(at)} (${hex(r.offset)}+${hex(r.length)}) is misaligned or beyond end of file`);
      }
      if (id.equals(BAT_GUID)) bat = r;
      else if (id.equals(METADATA_GUID)) metadata = r;
      else if (required) throw new SparsifyError(`vhdx: ${file.path}: unknown required region in table at ${hex(at)}`);
      else others.push(r);
    }
    if (!bat || !metadata) throw new CorruptError(`vhdx: ${file.path}: region table at ${hex(at)} lacks the BAT or metadata region`);
    return { bat, metadata, others };
  }
  throw new CorruptError(`vhdx: ${file.path}: ${lastErr} (both copies)`);
}

export interface VhdxMetadata {
  blockSize: number;
  /** File parameters bit 0: blocks must stay allocated (a fixed VHDX). */
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
}

export async function readMetadata(file: BlockFile, region: Region, src: StructSource = fileSource(file)): Promise<VhdxMetadata> {
  const len = Math.min(region.length, 4 * MiB);
  const b = Buffer.alloc(len);
  await src.read(b, region.offset, 'vhdx metadata');
  const where = `vhdx: ${file.path}: metadata table at ${hex(region.offset)}`;
  if (b.toString('latin1', 0, 8) !== 'metadata') throw new CorruptError(`${where} has a bad signature`);
  const count = b.readUInt16LE(10);
  if (count > 2047 || 32 + count * 32 > len) throw new CorruptError(`${where} has ${count} entries`);
  const items = new Map<string, Buffer>();
  for (let i = 0; i < count; i++) {
    const e = 32 + i * 32;
    const id = b.subarray(e, e + 16);
    const off = b.readUInt32LE(e + 16);
    const ilen = b.readUInt32LE(e + 20);
    const flags = b.readUInt32LE(e + 24);
    if (ilen > 0 && (off < 64 * KiB || off + ilen > len)) throw new CorruptError(`${where}: item ${i} (${hex(off)}+${ilen}) lies outside the region`);
    const known = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE83_DATA, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR].some((g) => g.equals(id));
    if (!known && flags & 4) throw new SparsifyError(`${where}: unknown required metadata item ${i}`);
    items.set(id.toString('hex'), b.subarray(off, off + ilen));
  }
  const need = (g: Buffer, size: number, name: string): Buffer => {
    const v = items.get(g.toString('hex'));
    if (!v || v.length < size) throw new CorruptError(`${where}: missing or short ${name} item`);
    return v;
  };
  const fp = need(FILE_PARAMETERS, 8, 'file parameters');
  const md: VhdxMetadata = {
    blockSize: fp.readUInt32LE(0),
    leaveBlocksAllocated: (fp.readUInt32LE(4) & 1) !== 0,
    hasParent: (fp.readUInt32LE(4) & 2) !== 0,
    virtualSize: u64le(need(VIRTUAL_DISK_SIZE, 8, 'virtual disk size'), 0, `${where}: virtual disk size`),
    logicalSectorSize: need(LOGICAL_SECTOR_SIZE, 4, 'logical sector size').readUInt32LE(0),
    physicalSectorSize: need(PHYSICAL_SECTOR_SIZE, 4, 'physical sector size').readUInt32LE(0),
  };
  const bs = md.blockSize;
  if (bs < MiB || bs > 256 * MiB || (bs & (bs - 1)) !== 0) throw new CorruptError(`${where}: block size ${bs} is invalid`);
  if (md.logicalSectorSize !== 512 && md.logicalSectorSize !== 4096) throw new CorruptError(`${where}: logical sector size ${md.logicalSectorSize} is invalid`);
  if (md.virtualSize > 64 * 2 ** 40 || md.virtualSize % md.logicalSectorSize !== 0) throw new CorruptError(`${where}: virtual size ${md.virtualSize} is invalid`);
  return md;
}

/** Payload blocks per sector-bitmap block: 2^23 sectors' worth of blocks. */
export function chunkRatio(md: { blockSize: number; logicalSectorSize: number }): number {
  return (2 ** 23 * md.logicalSectorSize) / md.blockSize;
}

export function batEntries(dataBlocks: number, ratio: number, differencing: boolean): number {
  if (differencing) return Math.ceil(dataBlocks / ratio) * (ratio + 1);
  return dataBlocks + Math.floor((dataBlocks - 1) / ratio);
}
