/**
 * --tmp DIR | BLOCK_DEVICE | prebuilt:FILE, told apart in virt-sparsify's order (a directory, then
 * a block device, then the prebuilt: prefix). sparsify needs no temporary space, so none of them is
 * ever written: a block device is not erased (virt-sparsify would overwrite it), a prebuilt file is
 * checked against the input and left as it is.
 */
import { stat } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import { checkPrebuiltOverlay } from '../operations/prebuilt-overlay.js';

const PREBUILT = 'prebuilt:';

/** Check --tmp for a copy of `input`; returns the line -v prints about it. */
export async function checkTmpOption(tmp: string, input: string, inputFormat: string | undefined): Promise<string> {
  const st = await stat(tmp).catch(() => undefined);
  if (st?.isDirectory()) return `--tmp ${tmp}: sparsify needs no temporary space; nothing is written there`;
  if (st?.isBlockDevice()) return `--tmp ${tmp}: sparsify needs no temporary space; the block device is not written (nor erased)`;
  if (tmp.startsWith(PREBUILT)) return checkPrebuiltOverlay(tmp.slice(PREBUILT.length), input, inputFormat);
  throw new SparsifyError(`--tmp parameter must point to a directory, block device or prebuilt file (${tmp}: ${st ? 'neither' : 'no such file or directory'})`);
}
