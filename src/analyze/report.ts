/** Printing the DiskMap: a tree for people (--analyze) and JSON for programs (--analyze --json, the service). */
import type { DiskMap, MapNode } from './diskmap.js';
import { allInfo, allWarnings } from './diskmap.js';
import { freeInGuestBytes, reclaimableBytes, snapshotOnlyBytes } from './reclaim.js';

export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

export interface NodeJson {
  device: string;
  role: MapNode['role'];
  offset: number;
  size: number;
  content: string;
  contentKind: MapNode['contentKind'];
  label?: string;
  uuid?: string;
  usedBytes?: number;
  freeBytes?: number;
  trusted: boolean;
  /** Free bytes (of this node and below) that the top image file itself holds: what sparsify gives back. */
  reclaimableBytes: number;
  /** Free bytes (of this node and below) allocated anywhere in the image's chain. */
  freeInGuestBytes: number;
  /** Free bytes (of this node and below) allocated only in backing files: not reclaimable before a merge. */
  snapshotOnlyBytes: number;
  warnings: string[];
  info: string[];
  details: MapNode['details'];
  children: NodeJson[];
}

export interface DiskMapJson {
  path: string;
  format: string;
  virtualSize: number;
  allocatedBytes: number;
  /** Bytes allocated as data, through the whole chain. */
  dataBytes: number;
  /** Bytes the top image file itself holds as data (equals dataBytes without a backing file). */
  ownDataBytes: number;
  /** What sparsifying (in place, or a copy keeping the backing file) gives back: free in the guest and
   *  held by the top image file itself, in whole clusters. */
  reclaimableBytes: number;
  /** Free in the guest and allocated anywhere in the chain (what a flattening copy leaves out). */
  freeInGuestBytes: number;
  /** Free in the guest but allocated only in backing files (earlier snapshots): not reclaimable. */
  snapshotOnlyBytes: number;
  /** Present when snapshotOnlyBytes > 0: the advice to merge the snapshots first. */
  snapshotAdvice?: string;
  layers: DiskMap['layers'];
  root: NodeJson;
  warnings: string[];
  info: string[];
}

/**
 * The feature page's advice, when earlier snapshots hold free space: sparsifying the active layer
 * cannot give it back (the backing files are never written); merging the snapshots first can.
 */
export function snapshotAdvice(map: DiskMap): string | undefined {
  const held = snapshotOnlyBytes(map);
  if (held === 0) return undefined;
  return (
    `${humanBytes(held)} of the guest's free space is held only by earlier snapshots (the backing files of ${map.path}) ` +
    'and cannot be given back by sparsifying the active layer; to sparsify effectively, merge the snapshots first'
  );
}

export function toJson(map: DiskMap): DiskMapJson {
  const node = (n: MapNode): NodeJson => ({
    device: n.device,
    role: n.role,
    offset: n.offset,
    size: n.size,
    content: n.content,
    contentKind: n.contentKind,
    ...(n.label !== undefined ? { label: n.label } : {}),
    ...(n.uuid !== undefined ? { uuid: n.uuid } : {}),
    ...(n.usedBytes !== undefined ? { usedBytes: n.usedBytes, freeBytes: n.freeBytes } : {}),
    trusted: n.trusted,
    reclaimableBytes: reclaimableBytes(map, n),
    freeInGuestBytes: freeInGuestBytes(map, n),
    snapshotOnlyBytes: snapshotOnlyBytes(map, n),
    warnings: n.warnings,
    info: n.info,
    details: n.details,
    children: n.children.map(node),
  });
  const advice = snapshotAdvice(map);
  return {
    path: map.path,
    format: map.format,
    virtualSize: map.virtualSize,
    allocatedBytes: map.allocatedBytes,
    dataBytes: map.dataBytes,
    ownDataBytes: map.ownDataBytes,
    reclaimableBytes: reclaimableBytes(map),
    freeInGuestBytes: freeInGuestBytes(map),
    snapshotOnlyBytes: snapshotOnlyBytes(map),
    ...(advice !== undefined ? { snapshotAdvice: advice } : {}),
    layers: map.layers,
    root: node(map.root),
    warnings: allWarnings(map),
    info: allInfo(map),
  };
}

export function toText(map: DiskMap): string {
  const lines: string[] = [];
  lines.push(`${map.path}: ${map.format}, virtual size ${humanBytes(map.virtualSize)}, allocated on host ${humanBytes(map.allocatedBytes)}`);
  if (map.layers.length > 1 || map.format !== 'raw') {
    map.layers.forEach((l, i) => {
      const extra = l.details ? ' ' + Object.entries(l.details).map(([k, v]) => `${k}=${v}`).join(' ') : '';
      lines.push(`  layer ${i}: ${l.path} (${l.format}, virtual ${humanBytes(l.virtualSize)}, allocated ${humanBytes(l.allocatedBytes)})${extra}`);
    });
  }
  lines.push('');
  const rows: string[][] = [['DEVICE', 'SIZE', 'CONTENT', 'LABEL', 'USED', 'FREE', 'RECLAIMABLE', 'NOTE']];
  const visit = (n: MapNode, prefix: string, childPrefix: string): void => {
    const note = !n.trusted && n.contentKind !== 'empty' ? 'kept' : n.warnings.length ? 'warning' : '';
    rows.push([
      prefix + n.device,
      humanBytes(n.size),
      n.content,
      n.label ?? '',
      n.usedBytes !== undefined ? humanBytes(n.usedBytes) : '',
      n.freeBytes !== undefined ? humanBytes(n.freeBytes) : '',
      humanBytes(reclaimableBytes(map, n)),
      note,
    ]);
    n.children.forEach((c, i) => {
      const last = i === n.children.length - 1;
      visit(c, childPrefix + (last ? '└─' : '├─'), childPrefix + (last ? '  ' : '│ '));
    });
  };
  visit(map.root, '', '');
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => [...r[col]!].length)));
  for (const r of rows) lines.push(r.map((c, i) => c + ' '.repeat(widths[i]! - [...c].length)).join('  ').trimEnd());
  lines.push('');
  if (map.layers.length > 1) {
    lines.push(`Reclaimable: ${humanBytes(reclaimableBytes(map))} of ${humanBytes(map.ownDataBytes)} allocated in the top image file`);
    lines.push(
      `Free in the guest: ${humanBytes(freeInGuestBytes(map))} allocated in the chain, of which ${humanBytes(snapshotOnlyBytes(map))} ` +
        'only in backing files (earlier snapshots): not reclaimable',
    );
    const advice = snapshotAdvice(map);
    if (advice) lines.push(`info: ${advice}`);
  } else {
    lines.push(`Reclaimable: ${humanBytes(reclaimableBytes(map))} of ${humanBytes(map.dataBytes)} allocated in the disk`);
  }
  for (const w of allWarnings(map)) lines.push(`warning: ${w}`);
  for (const i of allInfo(map)) lines.push(`info: ${i}`);
  return lines.join('\n');
}
