/**
 * An error meant for the user: printed as one clear line, never with a stack trace.
 * `exitCode` follows virt-sparsify: 1 for any error, 3 when discard is unsupported.
 */
export class SparsifyError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 1,
  ) {
    super(message);
    this.name = 'SparsifyError';
  }
}

/** Thrown for malformed on-disk structures; the message names the structure and offset. */
export class CorruptError extends SparsifyError {
  constructor(message: string) {
    super(message, 1);
    this.name = 'CorruptError';
  }
}

/** Format an offset the way error messages show it: 0x50000. */
export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}

/**
 * An error that stops the whole operation instead of keeping one volume whole: a key given for an
 * encrypted volume that does not open it, or a volume the user asked to open that cannot be.
 */
export class FatalError extends SparsifyError {
  constructor(message: string) {
    super(message, 1);
    this.name = 'FatalError';
  }
}
