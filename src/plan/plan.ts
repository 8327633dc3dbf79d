/**
 * plan: from the DiskMap and the user's options to the ranges to discard and keep.
 * Discard = trusted free space of every volume not ignored, plus whole devices named by --zero.
 * Keep = everything else. Nothing leaves the keep set without a structure that proves it free.
 */
import { Extents } from '../io/extents.js';
import type { DiskMap, MapNode } from '../analyze/diskmap.js';
import { walk } from '../analyze/diskmap.js';
import { matches } from './devices.js';

export interface PlanOptions {
  ignore?: readonly string[];
  zero?: readonly string[];
}

export interface PlanStep {
  device: string;
  action: 'fill-free' | 'zero-device' | 'ignore';
  bytes: number;
}

export interface Plan {
  virtualSize: number;
  /** Ranges whose content is dropped: they read as zero afterwards. */
  discard: Extents;
  /**
   * The part of `discard` that belongs to --zero devices. It must read as zero afterwards; the rest
   * is free in the guest, so where a backing file's data already shows through it, it may stay.
   */
  zero: Extents;
  /** Everything else, copied or left as it is. */
  keep: Extents;
  steps: PlanStep[];
  /** Names given with --ignore/--zero that match nothing on the disk. */
  unmatched: string[];
  /** Devices left alone because they, or a volume holding them, were named with --ignore. */
  ignored: string[];
}

export function makePlan(map: DiskMap, opts: PlanOptions = {}): Plan {
  const ignore = opts.ignore ?? [];
  const zero = opts.zero ?? [];
  const steps: PlanStep[] = [];
  const used = new Set<string>();
  const ignoredDevices: string[] = [];
  let discard = new Extents();
  let zeroed = new Extents();

  const visit = (node: MapNode, ignored: boolean): void => {
    const ig = ignore.find((s) => matches(s, node));
    if (ig) used.add(ig);
    const isIgnored = ignored || ig !== undefined;
    const z = zero.find((s) => matches(s, node));
    if (z && node.role !== 'disk') {
      used.add(z);
      // An LV's extents may be scattered: zero exactly the disk ranges of its own segments.
      const ranges = node.zeroRanges ?? node.diskRanges;
      discard = discard.union(ranges);
      zeroed = zeroed.union(ranges);
      steps.push({ device: node.device, action: 'zero-device', bytes: ranges.total() });
      return;
    }
    if (isIgnored) {
      ignoredDevices.push(node.device);
      if (ig) steps.push({ device: node.device, action: 'ignore', bytes: 0 });
    } else if (!node.free.isEmpty) {
      discard = discard.union(node.free);
      steps.push({ device: node.device, action: 'fill-free', bytes: node.free.total() });
    }
    for (const c of node.children) visit(c, isIgnored);
  };
  visit(map.root, false);

  discard = discard.clip(0, map.virtualSize);
  return {
    virtualSize: map.virtualSize,
    discard,
    zero: zeroed.clip(0, map.virtualSize),
    keep: discard.complement(0, map.virtualSize),
    steps,
    unmatched: [...ignore, ...zero].filter((s) => !used.has(s)),
    ignored: ignoredDevices,
  };
}

export { walk };
