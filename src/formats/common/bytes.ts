/** 64-bit on-disk fields as JavaScript numbers: exact below 2^53, and anything larger is corrupt for us. */
import { CorruptError, hex } from '../../io/errors.js';

export function u64le(buf: Buffer, off: number, what: string): number {
  return toNumber(buf.readBigUInt64LE(off), what);
}

export function u64be(buf: Buffer, off: number, what: string): number {
  return toNumber(buf.readBigUInt64BE(off), what);
}

function toNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`${what} ${hex(v)} is out of range`);
  return Number(v);
}

/** Is the whole buffer zero? (a null UUID / GUID) */
export function allZero(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
