/**
 * In-place discard and compaction for VMDK images: not written yet.
 */
import { SparsifyError } from '../../io/errors.js';
import type { DiskImage } from '../types.js';
import type { DiscardBackend } from '../discard-types.js';

export async function openVmdkDiscarder(image: DiskImage): Promise<DiscardBackend> {
  throw new SparsifyError(
    `${image.path}: --in-place is not supported yet for vmdk images; use copy mode: sparsify ${image.path} OUTPUT`,
  );
}
