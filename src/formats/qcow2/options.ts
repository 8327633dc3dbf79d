/** qcow2 creation options, spelled as qemu-img's -o for the qcow2 format. */
import { SparsifyError } from '../../io/errors.js';
import type { FormatOptions } from '../types.js';
import type { CompressionType } from './header.js';

export const QCOW2_CREATE_OPTIONS: ReadonlyMap<string, string> = new Map([
  ['cluster_size', 'qcow2 cluster size, a power of two from 512 to 2M (default 64k)'],
  ['compat', 'compatibility level: 0.10 (v2) or 1.1 (v3, default)'],
  ['preallocation', 'off (default) or metadata (allocate every L2 table and data cluster up front)'],
  ['lazy_refcounts', 'on/off: set the lazy refcounts feature (compat=1.1 only)'],
  ['compression_type', 'zlib (default) or zstd, for --compress (zstd needs compat=1.1)'],
  ['extended_l2', 'on/off: extended L2 entries with 32 subclusters (compat=1.1, cluster_size >= 16k)'],
  ['refcount_bits', 'width of a refcount entry: 1, 2, 4, 8, 16 (default), 32 or 64 (compat=0.10 needs 16)'],
]);

export interface Qcow2CreateOptions {
  clusterBits: number;
  version: 2 | 3;
  preallocation: 'off' | 'metadata';
  lazyRefcounts: boolean;
  compressionType: CompressionType;
  extendedL2: boolean;
  refcountOrder: number;
}

function bad(key: string, value: string, valid: string): never {
  throw new SparsifyError(`qcow2: invalid value '${value}' for option ${key} (valid: ${valid})`);
}

function parseBool(key: string, v: string): boolean {
  const l = v.toLowerCase();
  if (['on', 'yes', 'true'].includes(l)) return true;
  if (['off', 'no', 'false'].includes(l)) return false;
  return bad(key, v, 'on, off');
}

/** Sizes as qemu writes them: plain bytes or a k/M/G suffix (powers of 1024). */
function parseSize(key: string, v: string): number {
  const m = /^(\d+)([kKmMgG]?)[bB]?$/.exec(v.trim());
  if (!m) return bad(key, v, 'a size such as 65536, 64k or 2M');
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

export function parseCreateOptions(options: FormatOptions): Qcow2CreateOptions {
  for (const key of options.keys()) {
    if (!QCOW2_CREATE_OPTIONS.has(key)) {
      const list = [...QCOW2_CREATE_OPTIONS].map(([k, d]) => `  ${k}: ${d}`).join('\n');
      throw new SparsifyError(`qcow2: unknown option '${key}'; valid options are:\n${list}`);
    }
  }
  const get = (k: string): string | undefined => options.get(k);

  let clusterBits = 16;
  const cs = get('cluster_size');
  if (cs !== undefined) {
    const n = parseSize('cluster_size', cs);
    clusterBits = Math.log2(n);
    if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) {
      bad('cluster_size', cs, 'a power of two from 512 to 2M');
    }
  }

  let version: 2 | 3 = 3;
  const compat = get('compat');
  if (compat !== undefined) {
    if (compat === '0.10' || compat === 'v2') version = 2;
    else if (compat === '1.1' || compat === 'v3') version = 3;
    else bad('compat', compat, '0.10, v2, 1.1, v3');
  }

  const pre = get('preallocation') ?? 'off';
  if (pre !== 'off' && pre !== 'metadata') bad('preallocation', pre, 'off, metadata');

  const lazyRefcounts = get('lazy_refcounts') !== undefined ? parseBool('lazy_refcounts', get('lazy_refcounts')!) : false;
  const extendedL2 = get('extended_l2') !== undefined ? parseBool('extended_l2', get('extended_l2')!) : false;

  const ct = get('compression_type') ?? 'zlib';
  if (ct !== 'zlib' && ct !== 'zstd') bad('compression_type', ct, 'zlib, zstd');

  let refcountOrder = 4;
  const rb = get('refcount_bits');
  if (rb !== undefined) {
    const n = /^\d+$/.test(rb) ? Number(rb) : NaN;
    refcountOrder = Math.log2(n);
    if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) bad('refcount_bits', rb, '1, 2, 4, 8, 16, 32, 64');
  }

  if (version === 2) {
    const v3only = (what: string): never => {
      throw new SparsifyError(`qcow2: ${what} needs compat=1.1 (v3), not compat=0.10`);
    };
    if (lazyRefcounts) v3only('lazy_refcounts=on');
    if (extendedL2) v3only('extended_l2=on');
    if (ct !== 'zlib') v3only(`compression_type=${ct}`);
    if (refcountOrder !== 4) v3only(`refcount_bits=${2 ** refcountOrder}`);
  }
  if (extendedL2 && clusterBits < 14) {
    throw new SparsifyError(`qcow2: extended_l2=on needs cluster_size of at least 16k (got ${2 ** clusterBits})`);
  }
  return {
    clusterBits,
    version,
    preallocation: pre,
    lazyRefcounts,
    compressionType: ct,
    extendedL2,
    refcountOrder,
  };
}
