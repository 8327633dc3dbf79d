/**
 * Copy mode for the top layer of a backing chain, keeping the chain (the service's copy-and-replace
 * of a leaf): the output is a new qcow2 overlay on the same backing file, holding only what the old
 * top layer held minus its wholly free clusters (plan/overlay.ts), so it can be renamed over it.
 * Refused where the copy could not stand in for the original: no backing file, another format, or
 * internal snapshots, dirty bitmaps or an external data file that the copy would not carry over.
 */
import { realpathSync } from 'node:fs';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { SparsifyError } from '../io/errors.js';
import { Extents, type Range } from '../io/extents.js';
import type { DiskImage } from '../formats/types.js';
import { Qcow2Image } from '../formats/qcow2/image.js';

export interface OverlayTarget {
  /** The backing file as the output records it, and its format. */
  backing: { file: string; format?: string };
  /** The -o options, with the old top layer's cluster size and compat level unless given. */
  options: Map<string, string>;
  /** The ranges the old top layer holds itself (data, or zero hiding the backing file). */
  own: Extents;
}

function realDir(path: string): string {
  try {
    return realpathSync(dirname(resolve(path)));
  } catch {
    return dirname(resolve(path));
  }
}

/**
 * The backing file name for an output at `output`: as the top layer stores it when the output
 * lands in the same folder (a relative name then means the same file), else made relative to the
 * output's folder so that it still names the same file.
 */
export function backingNameFor(input: string, stored: string, output: string): string {
  if (isAbsolute(stored) || realDir(input) === realDir(output)) return stored;
  return relative(dirname(resolve(output)), resolve(dirname(input), stored));
}

export async function prepareOverlay(image: DiskImage, output: string, convert: string | undefined, options: Map<string, string>): Promise<OverlayTarget> {
  const p = image.path;
  if (!(image instanceof Qcow2Image) || image.backingName === undefined) {
    throw new SparsifyError(`${p}: keeping the backing file needs a qcow2 image with a backing file (this is ${image.format === 'qcow2' ? 'a qcow2 image without one' : `a ${image.format} image`})`);
  }
  if (convert !== undefined && convert !== 'qcow2') throw new SparsifyError(`keeping the backing file writes a qcow2 overlay; it cannot be combined with --convert ${convert}`);
  const h = image.header;
  const lost = (what: string): never => {
    throw new SparsifyError(`${p}: the image has ${what}, which a copy cannot keep: the copy could not replace it; merge or remove them first`);
  };
  if (h.nbSnapshots > 0) lost(`${h.nbSnapshots} internal snapshot(s)`);
  if (h.hasBitmaps) lost('persistent dirty bitmaps');
  if (h.hasDataFile) lost(`an external data file (${h.dataFile ?? '?'})`);

  const opts = new Map(options);
  if (!opts.has('cluster_size')) opts.set('cluster_size', String(h.clusterSize));
  if (!opts.has('compat')) opts.set('compat', h.version === 2 ? '0.10' : '1.1');

  const own: Range[] = [];
  for await (const e of image.ownExtents(0, image.virtualSize)) if (e.kind !== 'unallocated') own.push({ start: e.start, end: e.end });
  return {
    backing: { file: backingNameFor(p, image.backingName, output), ...(h.backingFormat !== undefined ? { format: h.backingFormat } : {}) },
    options: opts,
    own: new Extents(own),
  };
}
