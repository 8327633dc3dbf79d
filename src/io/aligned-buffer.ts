/**
 * Memory for O_DIRECT: its address, like the file offset and length, must be a multiple of the
 * filesystem's direct I/O unit; 4096 covers 512- and 4096-byte sectors.
 */
import { addressOf } from './syscalls.js';

/** Alignment of buffer address, offset and length for direct writes. */
export const DIRECT_ALIGN = 4096;

/** A buffer of `size` bytes whose first byte lies on a DIRECT_ALIGN boundary. */
export function alignedBuffer(size: number): Buffer {
  const raw = Buffer.allocUnsafe(size + DIRECT_ALIGN);
  const skip = (DIRECT_ALIGN - Number(addressOf(raw) % BigInt(DIRECT_ALIGN))) % DIRECT_ALIGN;
  return raw.subarray(skip, skip + size);
}

/** Is the buffer's first byte on a DIRECT_ALIGN boundary? */
export function isAligned(buf: Uint8Array): boolean {
  return addressOf(buf) % BigInt(DIRECT_ALIGN) === 0n;
}
