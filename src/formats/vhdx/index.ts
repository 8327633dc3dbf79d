/** The VHDX format driver. */
import { SparsifyError } from '../../io/errors.js';
import { checkOptions, choiceOption, sizeOption } from '../common/blockwriter.js';
import type { FormatDriver, FormatOptions, ImageWriter, WriterContext } from '../types.js';
import { openVhdx } from './image.js';
import { SIGNATURE } from './structures.js';
import { createVhdxWriter } from './writer.js';

const createOptions: ReadonlyMap<string, string> = new Map([
  ['subformat', 'dynamic|fixed; default dynamic'],
  ['block_size', 'payload block size, a power of two from 1M to 256M; default as qemu-img (8M..64M by size)'],
]);

async function create(path: string, virtualSize: number, options: FormatOptions, ctx: WriterContext): Promise<ImageWriter> {
  checkOptions('vhdx', options, createOptions);
  const sub = choiceOption('vhdx', options, 'subformat', ['dynamic', 'fixed'] as const, 'dynamic');
  const bs = sizeOption('vhdx', options, 'block_size');
  if (ctx.compress) throw new SparsifyError('vhdx: --compress is not supported for vhdx output');
  return createVhdxWriter(path, virtualSize, sub === 'fixed', bs === 0 ? undefined : bs);
}

export const vhdxDriver: FormatDriver = {
  name: 'vhdx',
  probe: (head) => head.length >= 8 && head.toString('latin1', 0, 8) === SIGNATURE,
  open: openVhdx,
  createOptions,
  createWriter: create,
};
