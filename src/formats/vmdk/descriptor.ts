/** The VMDK text descriptor: key="value" lines and extent lines `ACCESS SECTORS TYPE "FILE" [OFFSET]`. */
import { CorruptError } from '../../io/errors.js';

export interface ExtentLine {
  access: string;
  sectors: number;
  type: string;
  file?: string;
  offset: number;
}

export interface Descriptor {
  createType: string;
  parentCID: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
}

const MAX_EXTENTS = 100000;

export function parseDescriptor(text: string, path: string): Descriptor {
  const d: Descriptor = { createType: '', parentCID: 'ffffffff', extents: [] };
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trim();
    if (!line || line.startsWith('#')) continue;
    const ext = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?/.exec(line);
    if (ext) {
      if (d.extents.length >= MAX_EXTENTS) throw new CorruptError(`vmdk: ${path}: descriptor has too many extents`);
      d.extents.push({
        access: ext[1]!,
        sectors: Number(ext[2]),
        type: ext[3]!,
        file: ext[4],
        offset: ext[5] ? Number(ext[5]) : 0,
      });
      continue;
    }
    const kv = /^([A-Za-z0-9_.]+)\s*=\s*"?([^"]*)"?\s*$/.exec(line);
    if (!kv) continue;
    if (kv[1] === 'createType') d.createType = kv[2]!;
    else if (kv[1] === 'parentCID') d.parentCID = kv[2]!.toLowerCase();
    else if (kv[1] === 'parentFileNameHint') d.parentFileNameHint = kv[2]!;
  }
  for (const e of d.extents) {
    if (!Number.isSafeInteger(e.sectors * 512) || !Number.isSafeInteger(e.offset * 512)) {
      throw new CorruptError(`vmdk: ${path}: descriptor extent of ${e.sectors} sectors is out of range`);
    }
  }
  return d;
}

export function looksLikeDescriptor(head: Buffer): boolean {
  const t = head.subarray(0, Math.min(head.length, 1024)).toString('latin1');
  return /^#\s*Disk DescriptorFile/.test(t) || (/createType\s*=/.test(t) && /^[\x09\x0a\x0d\x20-\x7e]*$/.test(t.slice(0, 200)));
}

export interface DescriptorOptions {
  createType: string;
  extentFile: string;
  sectors: number;
}

/** A descriptor like qemu-img writes for a single sparse extent. */
export function buildDescriptor(o: DescriptorOptions): string {
  const cid = Math.floor(Math.random() * 0xfffffffe).toString(16).padStart(8, '0');
  const cyl = Math.min(65535, Math.floor(o.sectors / (16 * 63)));
  return [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${cid}`,
    'parentCID=ffffffff',
    `createType="${o.createType}"`,
    '',
    '# Extent description',
    `RW ${o.sectors} SPARSE "${o.extentFile.replace(/"/g, '')}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.virtualHWVersion = "4"',
    `ddb.geometry.cylinders = "${cyl}"`,
    'ddb.geometry.heads = "16"',
    'ddb.geometry.sectors = "63"',
    'ddb.adapterType = "ide"',
    '',
  ].join('\n');
}
