/**
 * Moving bytes between host files without passing them through sparsify's memory: shared blocks
 * (a reflink, FICLONERANGE: XFS with reflink, btrfs) or an in-kernel copy (copy_file_range, for
 * files on one filesystem). Whether the host can is probed harmlessly, by cloning one block of the
 * source into a scratch file beside the output, removed at once. The source is only ever read.
 */
import { open, stat, statfs, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { BlockFile } from './file.js';
import { cloneRange } from './syscalls.js';

export interface HostTransfer {
  /** Blocks can be shared with the source (pieces aligned to `blockSize` at both ends). */
  clone: boolean;
  /** The kernel can copy from the source to the output (both on one filesystem). */
  copy: boolean;
  /** The output filesystem's block size: the alignment clones need. */
  blockSize: number;
}

export const NO_TRANSFER: HostTransfer = { clone: false, copy: false, blockSize: 0 };

/** errno names meaning "this host cannot do that here", as opposed to an I/O failure. */
export const TRANSFER_UNSUPPORTED = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'ENOTTY', 'EINVAL', 'EXDEV', 'EBADF', 'ETXTBSY', 'EPERM']);

export function isTransferUnsupported(e: unknown): boolean {
  return TRANSFER_UNSUPPORTED.has((e as { code?: string }).code ?? '');
}

/**
 * What the host can do between `source` and a new file at `outputPath`. `sampleOffset` is a data
 * offset of the source to try a clone with.
 */
export async function probeHostTransfer(source: BlockFile, sampleOffset: number, outputPath: string): Promise<HostTransfer> {
  if (source.isBlockDevice) return NO_TRANSFER;
  const dir = dirname(outputPath);
  const [src, out, fs] = await Promise.all([stat(source.path), stat(dir), statfs(dir)]);
  const blockSize = fs.bsize;
  const copy = src.dev === out.dev;
  const at = Math.floor(sampleOffset / blockSize) * blockSize;
  if (!copy || at + blockSize > source.size) return { clone: false, copy, blockSize };
  const scratch = join(dir, `.${basename(outputPath)}.sparsify-probe-${process.pid}`);
  const h = await open(scratch, 'wx');
  try {
    await cloneRange(source.fd, at, h.fd, 0, blockSize);
    return { clone: true, copy, blockSize };
  } catch (e) {
    if (!isTransferUnsupported(e)) throw e;
    return { clone: false, copy, blockSize };
  } finally {
    await h.close();
    await unlink(scratch).catch(() => undefined);
  }
}
