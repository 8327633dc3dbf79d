/**
 * In-place discard and compaction for VHDX images: not written yet.
 */
import { SparsifyError } from '../../io/errors.js';
import type { DiskImage } from '../types.js';
import type { DiscardBackend } from '../discard-types.js';

export async function openVhdxDiscarder(image: DiskImage): Promise<DiscardBackend> {
  throw new SparsifyError(
    `${image.path}: --in-place is not supported yet for vhdx images; use copy mode: sparsify ${image.path} OUTPUT`,
  );
}
