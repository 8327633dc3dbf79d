/** The VMDK format driver: reader for sparse, stream-optimized and descriptor-based disks; two writers. */
import { SparsifyError } from '../../io/errors.js';
import { checkOptions, choiceOption } from '../common/blockwriter.js';
import type { FormatDriver, FormatOptions, ImageWriter, WriterContext } from '../types.js';
import { looksLikeDescriptor } from './descriptor.js';
import { isSparseHeader } from './header.js';
import { openVmdk } from './image.js';
import { createSparseWriter, createStreamWriter } from './writer.js';

const createOptions: ReadonlyMap<string, string> = new Map([
  ['subformat', 'monolithicSparse|streamOptimized; default monolithicSparse (streamOptimized with --compress)'],
]);

async function createVmdkWriter(path: string, virtualSize: number, options: FormatOptions, ctx: WriterContext): Promise<ImageWriter> {
  checkOptions('vmdk', options, createOptions);
  const sub = choiceOption('vmdk', options, 'subformat', ['monolithicSparse', 'streamOptimized'] as const, ctx.compress ? 'streamOptimized' : 'monolithicSparse');
  if (ctx.compress && sub !== 'streamOptimized') {
    throw new SparsifyError('vmdk: --compress needs subformat=streamOptimized');
  }
  // The descriptor names the file itself: use the name it will have once renamed into place.
  return sub === 'streamOptimized' ? createStreamWriter(path, virtualSize, ctx.threads, ctx.finalPath) : createSparseWriter(path, virtualSize, ctx.finalPath);
}

export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  probe: (head) => isSparseHeader(head) || looksLikeDescriptor(head),
  open: openVmdk,
  createOptions,
  createWriter: createVmdkWriter,
};
