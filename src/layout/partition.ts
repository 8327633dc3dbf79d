/** What MBR and GPT readers share: turning table entries into child volumes, with sanity checks. */
import { hex } from '../io/errors.js';
import type { ChildVolume } from './types.js';
import type { Volume } from './volume.js';

export interface PartitionEntry {
  /** Linux partition number: /dev/sdaN. */
  number: number;
  start: number;
  length: number;
  /** MBR type byte as hex, or GPT type GUID. */
  type: string;
  typeName?: string;
  name?: string;
  /** Where the entry itself lives, for messages. */
  entryOffset: number;
}

/** Device name of partition `n` of `disk`: /dev/sda + 1. */
export function partitionName(disk: string, n: number): string {
  return /\d$/.test(disk) ? `${disk}p${n}` : `${disk}${n}`;
}

/**
 * Turn entries into child volumes. A partition that reaches past the end of the disk or overlaps
 * another cannot be read with confidence: it is left out (so it is kept whole) and a warning says why.
 */
export function entriesToChildren(
  disk: Volume,
  scheme: string,
  entries: readonly PartitionEntry[],
  warnings: string[],
): ChildVolume[] {
  const bad = new Set<PartitionEntry>();
  for (const e of entries) {
    if (e.start + e.length > disk.size) {
      warnings.push(
        `${scheme} partition ${e.number} (entry at ${hex(e.entryOffset)}) ends at ${hex(e.start + e.length)}, past the end of the disk (${hex(disk.size)}); it is kept as it is`,
      );
      bad.add(e);
    }
  }
  const sorted = [...entries].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.start < a.start + a.length) {
      warnings.push(`${scheme} partitions ${a.number} and ${b.number} overlap; both are kept as they are`);
      bad.add(a);
      bad.add(b);
    }
  }
  return entries
    .filter((e) => !bad.has(e))
    .map((e) => ({
      volume: disk.slice(partitionName(disk.name, e.number), e.start, e.length),
      details: {
        partition: e.number,
        start: e.start,
        type: e.type,
        ...(e.typeName ? { typeName: e.typeName } : {}),
        ...(e.name ? { name: e.name } : {}),
      },
    }));
}
