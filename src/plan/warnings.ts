/**
 * The warnings an operation prints: each volume's own, prefixed by its device, except for volumes
 * left alone with --ignore. In-place mode words a filesystem sparsify cannot read exactly as
 * virt-sparsify does, since scripts grep for that line.
 */
import { walk, type DiskMap, type MapNode } from '../analyze/diskmap.js';
import type { Plan } from './plan.js';

export type OperationMode = 'copy' | 'in-place';

/** virt-sparsify --in-place's warning for a filesystem it could not trim. */
export function fstrimUnsupported(device: string, type: string): string {
  return `fstrim operation is not supported on ${device} (${type}).  Suppress this warning using '--ignore ${device}', or use copying mode instead.`;
}

function nodeWarnings(n: MapNode, mode: OperationMode): string[] {
  if (mode === 'in-place' && n.unsupported && n.contentKind === 'filesystem') return [fstrimUnsupported(n.device, n.content)];
  return n.warnings.map((w) => `${n.device}: ${w}`);
}

export function operationWarnings(map: DiskMap, plan: Plan, mode: OperationMode): string[] {
  const ignored = new Set(plan.ignored);
  const out: string[] = [];
  for (const n of walk(map.root)) if (!ignored.has(n.device)) out.push(...nodeWarnings(n, mode));
  return out;
}
