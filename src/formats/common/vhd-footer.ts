/**
 * VHD (qemu: vpc) footer and dynamic-header layouts, checksums and CHS geometry, per Microsoft's
 * "Virtual Hard Disk Image Format Specification". All fields big-endian.
 */
import { CorruptError, SparsifyError } from '../../io/errors.js';
import { u64be } from './bytes.js';

export const FOOTER_SIZE = 512;
export const DYN_HEADER_SIZE = 1024;
export const TYPE_FIXED = 2;
export const TYPE_DYNAMIC = 3;
export const TYPE_DIFFERENCING = 4;
/** 65535 cylinders x 16 heads x 255 sectors: geometry saying "use current_size". */
export const MAX_CHS_SECTORS = 65535 * 16 * 255;
/** Seconds between 1970-01-01 and 2000-01-01, the VHD epoch. */
const VHD_EPOCH = 946684800;

export interface VhdFooter {
  dataOffset: number;
  creatorApp: string;
  currentSize: number;
  cylinders: number;
  heads: number;
  sectors: number;
  diskType: number;
}

/** One's complement of the byte sum, with the checksum field (at `at`) counted as zero. */
export function vhdChecksum(buf: Buffer, at: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < at || i >= at + 4) sum += buf[i]!;
  return ~sum >>> 0;
}

export function isFooter(buf: Buffer): boolean {
  return buf.length >= 8 && buf.toString('latin1', 0, 8) === 'conectix';
}

export function parseFooter(f: Buffer, path: string, where: number): VhdFooter {
  if (!isFooter(f)) throw new CorruptError(`vpc: ${path}: no 'conectix' footer at 0x${where.toString(16)}`);
  const stored = f.readUInt32BE(64);
  const want = vhdChecksum(f, 64);
  if (stored !== want) {
    throw new CorruptError(
      `vpc: ${path}: footer at 0x${where.toString(16)} has bad checksum 0x${stored.toString(16)} (expected 0x${want.toString(16)})`,
    );
  }
  return {
    dataOffset: f.readBigUInt64BE(16) === 0xffffffffffffffffn ? -1 : u64be(f, 16, `vpc: ${path}: footer data offset`),
    creatorApp: f.toString('latin1', 28, 32),
    currentSize: u64be(f, 48, `vpc: ${path}: footer current size`),
    cylinders: f.readUInt16BE(56),
    heads: f.readUInt8(58),
    sectors: f.readUInt8(59),
    diskType: f.readUInt32BE(60),
  };
}

/**
 * The virtual size qemu uses: Virtual PC sizes disks by CHS geometry, Hyper-V and others by
 * current_size; the maximum geometry always means current_size (qemu's vpc_open table).
 */
export function virtualSizeOf(f: VhdFooter): number {
  const chs = f.cylinders * f.heads * f.sectors;
  const bySize = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'].includes(f.creatorApp);
  if (bySize || chs === MAX_CHS_SECTORS) return f.currentSize;
  return chs * 512;
}

/** The CHS geometry algorithm from the VHD specification (appendix). */
export function chsGeometry(totalSectors: number): { c: number; h: number; s: number } {
  const ts = Math.min(totalSectors, MAX_CHS_SECTORS);
  let s: number;
  let h: number;
  let cth: number;
  if (ts >= 65535 * 16 * 63) {
    s = 255;
    h = 16;
    cth = Math.floor(ts / s);
  } else {
    s = 17;
    cth = Math.floor(ts / s);
    h = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= h * 1024 || h > 16) {
      s = 31;
      h = 16;
      cth = Math.floor(ts / s);
    }
    if (cth >= h * 1024) {
      s = 63;
      h = 16;
      cth = Math.floor(ts / s);
    }
  }
  return { c: Math.floor(cth / h), h, s };
}

/**
 * Size and geometry for a new image. force_size (our default) keeps the exact size: maximum geometry,
 * which tells readers to use current_size. Otherwise round up to a CHS multiple, as qemu does.
 */
export function planSize(size: number, forceSize: boolean): { size: number; c: number; h: number; s: number; creator: string } {
  const sectors = Math.ceil(size / 512);
  if (forceSize) {
    if (sectors > 0xff000000) throw new SparsifyError(`vpc: virtual size ${size} exceeds the 2040 GiB VHD limit`);
    return { size: sectors * 512, c: 65535, h: 16, s: 255, creator: 'qem2' };
  }
  let g = { c: 0, h: 0, s: 0 };
  const want = Math.min(sectors, MAX_CHS_SECTORS);
  for (let i = 0; want > g.c * g.h * g.s; i++) g = chsGeometry(want + i);
  const chs = g.c * g.h * g.s;
  if (chs === MAX_CHS_SECTORS) return { size: sectors * 512, ...g, creator: 'qemu' };
  return { size: chs * 512, ...g, creator: 'qemu' };
}

export function buildFooter(o: {
  size: number;
  c: number;
  h: number;
  s: number;
  creator: string;
  type: number;
  dataOffset: number;
  uuid: Buffer;
}): Buffer {
  const f = Buffer.alloc(FOOTER_SIZE);
  f.write('conectix', 0, 'latin1');
  f.writeUInt32BE(2, 8); // features: reserved bit always set
  f.writeUInt32BE(0x00010000, 12);
  f.writeBigUInt64BE(o.dataOffset < 0 ? 0xffffffffffffffffn : BigInt(o.dataOffset), 16);
  f.writeUInt32BE(Math.max(0, Math.floor(Date.now() / 1000) - VHD_EPOCH), 24);
  f.write(o.creator, 28, 'latin1');
  f.writeUInt32BE(0x00050003, 32);
  f.write('Wi2k', 36, 'latin1');
  f.writeBigUInt64BE(BigInt(o.size), 40);
  f.writeBigUInt64BE(BigInt(o.size), 48);
  f.writeUInt16BE(o.c, 56);
  f.writeUInt8(o.h, 58);
  f.writeUInt8(o.s, 59);
  f.writeUInt32BE(o.type, 60);
  o.uuid.copy(f, 68);
  f.writeUInt32BE(vhdChecksum(f, 64), 64);
  return f;
}
