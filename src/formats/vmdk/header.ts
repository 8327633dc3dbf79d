/**
 * VMDK sparse extent header ("KDMV", little-endian, one sector), per VMware's Virtual Disk Format 1.1.
 * Offsets and sizes are in 512-byte sectors.
 */
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import type { BlockFile } from '../../io/file.js';
import { u64le } from '../common/bytes.js';

export const SECTOR = 512;
export const MAGIC = Buffer.from('KDMV', 'latin1');
export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;
export const GD_AT_END = 0xffffffffffffffffn;
export const COMPRESS_DEFLATE = 1;
export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

export interface SparseHeader {
  version: number;
  flags: number;
  capacity: number;
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** -1 when the header says the GD is at the end (stream-optimized: look in the footer). */
  gdOffset: number;
  overHead: number;
  compressAlgorithm: number;
}

export function isSparseHeader(b: Buffer): boolean {
  return b.length >= 4 && b.subarray(0, 4).equals(MAGIC);
}

export function parseSparseHeader(b: Buffer, path: string, at: number): SparseHeader {
  if (!isSparseHeader(b)) throw new CorruptError(`vmdk: ${path}: no KDMV header at ${hex(at)}`);
  const w = `vmdk: ${path}: header at ${hex(at)}`;
  const h: SparseHeader = {
    version: b.readUInt32LE(4),
    flags: b.readUInt32LE(8),
    capacity: u64le(b, 12, `${w}: capacity`),
    grainSize: u64le(b, 20, `${w}: grain size`),
    descriptorOffset: u64le(b, 28, `${w}: descriptor offset`),
    descriptorSize: u64le(b, 36, `${w}: descriptor size`),
    numGTEsPerGT: b.readUInt32LE(44),
    rgdOffset: u64le(b, 48, `${w}: redundant GD offset`),
    gdOffset: b.readBigUInt64LE(56) === GD_AT_END ? -1 : u64le(b, 56, `${w}: GD offset`),
    overHead: u64le(b, 64, `${w}: overhead`),
    compressAlgorithm: b.readUInt16LE(77),
  };
  if (h.version < 1 || h.version > 3) throw new SparsifyError(`${w}: unsupported VMDK version ${h.version}`);
  const g = h.grainSize;
  if (g < 1 || g > 1 << 16 || (g & (g - 1)) !== 0) throw new CorruptError(`${w}: grain size ${g} sectors is invalid`);
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > 1 << 16) throw new CorruptError(`${w}: ${h.numGTEsPerGT} entries per grain table is invalid`);
  if (h.capacity > 2 ** 53 / SECTOR) throw new CorruptError(`${w}: capacity ${h.capacity} sectors is out of range`);
  if (h.flags & FLAG_COMPRESSED && h.compressAlgorithm !== COMPRESS_DEFLATE) {
    throw new SparsifyError(`${w}: unsupported compression algorithm ${h.compressAlgorithm}`);
  }
  return h;
}

/** Resolve a stream-optimized header whose GD is at the end: the footer (3rd sector from the end) holds it. */
export async function readFooterHeader(file: BlockFile): Promise<SparseHeader> {
  if (file.size < 3 * SECTOR) throw new CorruptError(`vmdk: ${file.path}: too small for a stream footer`);
  const at = file.size - 3 * SECTOR;
  const b = Buffer.alloc(3 * SECTOR);
  await file.readExact(b, at, 'vmdk footer');
  const footerType = b.readUInt32LE(12);
  const eos = b.subarray(2 * SECTOR);
  if (footerType !== MARKER_FOOTER || b.readUInt32LE(8) !== 0 || eos.readBigUInt64LE(0) !== 0n || eos.readUInt32LE(8) !== 0 || eos.readUInt32LE(12) !== MARKER_EOS) {
    throw new CorruptError(`vmdk: ${file.path}: header says the grain directory is at the end, but no valid footer at ${hex(at)}`);
  }
  const h = parseSparseHeader(b.subarray(SECTOR, 2 * SECTOR), file.path, at + SECTOR);
  if (h.gdOffset < 0) throw new CorruptError(`vmdk: ${file.path}: footer at ${hex(at + SECTOR)} has no grain directory offset`);
  return h;
}

export function buildSparseHeader(h: SparseHeader): Buffer {
  const b = Buffer.alloc(SECTOR);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(h.version, 4);
  b.writeUInt32LE(h.flags, 8);
  b.writeBigUInt64LE(BigInt(h.capacity), 12);
  b.writeBigUInt64LE(BigInt(h.grainSize), 20);
  b.writeBigUInt64LE(BigInt(h.descriptorOffset), 28);
  b.writeBigUInt64LE(BigInt(h.descriptorSize), 36);
  b.writeUInt32LE(h.numGTEsPerGT, 44);
  b.writeBigUInt64LE(BigInt(h.rgdOffset), 48);
  b.writeBigUInt64LE(h.gdOffset < 0 ? GD_AT_END : BigInt(h.gdOffset), 56);
  b.writeBigUInt64LE(BigInt(h.overHead), 64);
  b.write('\n \r\n', 73, 'latin1'); // newline-corruption detection characters
  b.writeUInt16LE(h.compressAlgorithm, 77);
  return b;
}
