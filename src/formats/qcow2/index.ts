/** The qcow2 format driver: reader (Qcow2Image) and writer (Qcow2Writer). */
import type { FormatDriver } from '../types.js';
import { QCOW2_MAGIC } from './header.js';
import { Qcow2Image } from './image.js';
import { QCOW2_CREATE_OPTIONS } from './options.js';
import { Qcow2Writer } from './writer.js';

export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  probe(head: Buffer): boolean {
    if (head.length < 8 || head.readUInt32BE(0) !== QCOW2_MAGIC) return false;
    const version = head.readUInt32BE(4);
    return version >= 2; // newer versions are ours to refuse with a clear message
  },
  open: (file, ctx) => Qcow2Image.open(file, ctx),
  createOptions: QCOW2_CREATE_OPTIONS,
  createWriter: (path, virtualSize, options, ctx) => Qcow2Writer.create(path, virtualSize, options, ctx),
};

export { Qcow2Image } from './image.js';
export { Qcow2Writer } from './writer.js';
