/** Printing the DiskMap: a tree for people (--analyze) and JSON for programs (--analyze --json, the service). */
import type { DiskMap, MapNode } from './diskmap.js';
import { allInfo, allWarnings } from './diskmap.js';
import { reclaimableBytes } from './analyze.js';

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
  /** Free bytes (of this node and below) that the image has allocated today. */
  reclaimableBytes: number;
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
  dataBytes: number;
  reclaimableBytes: number;
  layers: DiskMap['layers'];
  root: NodeJson;
  warnings: string[];
  info: string[];
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
    warnings: n.warnings,
    info: n.info,
    details: n.details,
    children: n.children.map(node),
  });
  return {
    path: map.path,
    format: map.format,
    virtualSize: map.virtualSize,
    allocatedBytes: map.allocatedBytes,
    dataBytes: map.dataBytes,
    reclaimableBytes: reclaimableBytes(map),
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
  lines.push(`Reclaimable: ${humanBytes(reclaimableBytes(map))} of ${humanBytes(map.dataBytes)} allocated in the disk`);
  for (const w of allWarnings(map)) lines.push(`warning: ${w}`);
  for (const i of allInfo(map)) lines.push(`info: ${i}`);
  return lines.join('\n');
}
