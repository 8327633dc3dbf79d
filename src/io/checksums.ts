/**
 * Checksums used by on-disk formats. All table-driven, reflected forms.
 * crc32c: ext4 metadata_csum, XFS v5, btrfs, VHDX. crc32: GPT (zlib's). crc16: ext4 gdt_csum.
 */
import { crc32 as zlibCrc32 } from 'node:zlib';

function makeTable32(poly: number): Uint32Array {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
}

const CRC32C_TABLE = makeTable32(0x82f63b78);

/**
 * Raw CRC32C update: no inversion on entry or exit. Linux's crc32c_le(seed, data) and ext4_chksum().
 */
export function crc32cRaw(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** The standard CRC32C (iSCSI/Castagnoli): initial ~0, final inversion. */
export function crc32c(data: Uint8Array): number {
  return ~crc32cRaw(0xffffffff, data) >>> 0;
}

/** Standard CRC-32 (IEEE, as zlib and GPT use). */
export function crc32(data: Uint8Array, initial = 0): number {
  return zlibCrc32(data, initial) >>> 0;
}

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** Linux lib/crc16 (poly 0x8005 reflected), no inversion. */
export function crc16(seed: number, data: Uint8Array): number {
  let c = seed & 0xffff;
  for (let i = 0; i < data.length; i++) c = (CRC16_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8)) & 0xffff;
  return c;
}
