/**
 * Constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md): the fixed newstyle
 * handshake, transmission requests, simple and structured replies. Every integer on the wire is
 * big-endian; offsets are 64-bit, request lengths 32-bit.
 */

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1;
export const FLAG_NO_ZEROES = 2;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  STARTTLS: 5,
  GO: 7,
  STRUCTURED_REPLY: 8,
  SET_META_CONTEXT: 10,
} as const;

export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
} as const;
/** Option replies with this bit set are errors. */
export const REP_ERROR_BIT = 0x80000000;
const REP_ERRORS: Record<number, string> = {
  1: 'unsupported option',
  2: 'refused by policy',
  3: 'invalid',
  4: 'not supported on this platform',
  5: 'TLS required',
  6: 'unknown export',
  7: 'server shutting down',
  8: 'block size required',
  9: 'too big',
};
export function optionErrorName(type: number): string {
  return REP_ERRORS[type & 0x7fffffff] ?? `error ${type & 0x7fffffff}`;
}
export const REP_ERR_UNSUP = (REP_ERROR_BIT | 1) >>> 0;
export const REP_ERR_TLS_REQD = (REP_ERROR_BIT | 5) >>> 0;
export const REP_ERR_POLICY = (REP_ERROR_BIT | 2) >>> 0;

export const INFO = {
  EXPORT: 0,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags (from NBD_INFO_EXPORT). */
export const TFLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  CAN_MULTI_CONN: 1 << 8,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;
export type CommandType = (typeof CMD)[keyof typeof CMD];

export const CMD_NAMES: Record<number, string> = {
  0: 'READ',
  1: 'WRITE',
  2: 'DISC',
  3: 'FLUSH',
  4: 'TRIM',
  6: 'WRITE_ZEROES',
  7: 'BLOCK_STATUS',
};

export const CMD_FLAG = {
  FUA: 1,
  NO_HOLE: 2,
  REQ_ONE: 8,
  FAST_ZERO: 16,
} as const;

export const CHUNK = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
export const CHUNK_FLAG_DONE = 1;
export const CHUNK_ERROR_BIT = 0x8000;

/** base:allocation descriptor flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};
export function errnoName(code: number): string {
  return ERRNO_NAMES[code] ?? `error ${code}`;
}
export const ENOTSUP = 95;
export const EINVAL = 22;

/** The largest length one request may carry (32-bit), kept a multiple of any block size. */
export const MAX_REQUEST_LENGTH = 0x80000000;
export const DEFAULT_PORT = 10809;
