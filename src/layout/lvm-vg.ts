/**
 * The volume group described by a parsed LVM2 metadata text: its physical volumes, and its
 * logical volumes with their segments. Only structure is checked here (types, ranges, segment
 * tiling); what may be exposed or reclaimed is decided in lvm-map.ts.
 *
 * Facts (lvm2 lib/format_text/import_vsn1.c, export.c): extent_size, pe_start and stripe_size are
 * in 512-byte sectors; pe_count and extent counts in extents. A linear LV is written as a
 * "striped" segment with stripe_count 1. Segment sections are named segment1..segmentN and must
 * tile the LV's extents from 0. Areas are `stripes = ["pv0", first_pe, ...]`; an area may also
 * name another LV (pvmove, stacked LVs). Non-striped segment types (thin, snapshot, raid, mirror,
 * cache...) refer to their sub-LVs by name in their own keys.
 */
import { CorruptError } from '../io/errors.js';
import { LvmSection, type LvmValue } from './lvm-text.js';

export interface PhysicalVolumeInfo {
  /** The key in physical_volumes (pv0, pv1...), used by segment areas. */
  key: string;
  /** UUID without dashes. */
  uuid: string;
  /** First extent, in sectors from the PV's start. */
  peStart: number;
  peCount: number;
}

export interface SegmentArea {
  /** A PV key or an LV name. */
  name: string;
  /** First extent within that PV or LV. */
  start: number;
}

export interface LvSegment {
  startExtent: number;
  extentCount: number;
  type: string;
  /** For striped/linear segments. */
  stripes?: SegmentArea[];
  /** In sectors; 0 for one stripe. */
  stripeSize?: number;
  /** Every string value of the segment except `type`: names of the LVs/PVs it uses. */
  refs: string[];
  /** For snapshot segments: the origin LV and the COW LV. */
  origin?: string;
  cow?: string;
}

export interface LogicalVolumeInfo {
  name: string;
  status: string[];
  segments: LvSegment[];
  extents: number;
}

export interface VolumeGroupInfo {
  name: string;
  seqno: number;
  status: string[];
  /** Sectors. */
  extentSize: number;
  pvs: PhysicalVolumeInfo[];
  lvs: LogicalVolumeInfo[];
}

const MAX_LVS = 100_000;
const MAX_SEGMENTS_PER_LV = 100_000;

export function isStripedType(type: string): boolean {
  return type === 'striped' || type === 'linear';
}

function fail(msg: string): never {
  throw new CorruptError(`lvm2: metadata: ${msg}`);
}

function need(sec: LvmSection, key: string, where: string): number {
  const v = sec.count(key);
  if (v === undefined) fail(`${where} has no valid ${key}`);
  return v;
}

function collectStrings(v: LvmValue, out: string[]): void {
  if (typeof v === 'string') out.push(v);
  else if (Array.isArray(v)) for (const x of v) collectStrings(x, out);
  else if (v instanceof LvmSection) for (const x of v.entries.values()) collectStrings(x, out);
}

function parseSegment(sec: LvmSection, where: string): LvSegment {
  const type = sec.string('type');
  if (type === undefined) fail(`${where} has no type`);
  const startExtent = need(sec, 'start_extent', where);
  const extentCount = need(sec, 'extent_count', where);
  if (extentCount === 0) fail(`${where} has no extents`);
  const refs: string[] = [];
  for (const [k, v] of sec.entries) if (k !== 'type') collectStrings(v, refs);
  const seg: LvSegment = { startExtent, extentCount, type, refs };
  if (type === 'snapshot') {
    seg.origin = sec.string('origin');
    seg.cow = sec.string('cow_store');
  }
  if (!isStripedType(type)) return seg;
  const count = type === 'linear' ? 1 : need(sec, 'stripe_count', where);
  const raw = sec.get('stripes');
  if (count < 1 || !Array.isArray(raw) || raw.length !== count * 2) fail(`${where} has ${count} stripes but a stripes list that does not match`);
  if (extentCount % count !== 0) fail(`${where} has ${extentCount} extents, not a multiple of its ${count} stripes`);
  const stripes: SegmentArea[] = [];
  for (let i = 0; i < count; i++) {
    const name = raw[2 * i];
    const start = raw[2 * i + 1];
    if (typeof name !== 'string' || typeof start !== 'number' || !Number.isSafeInteger(start) || start < 0) fail(`${where} stripe ${i} is malformed`);
    stripes.push({ name, start });
  }
  seg.stripes = stripes;
  seg.stripeSize = count > 1 ? need(sec, 'stripe_size', where) : 0;
  if (count > 1 && seg.stripeSize === 0) fail(`${where} has stripe_size 0`);
  return seg;
}

function parseLv(name: string, sec: LvmSection): LogicalVolumeInfo {
  const where = `LV ${name}`;
  const status = sec.strings('status');
  if (!status) fail(`${where} has no status list`);
  const segs: LvSegment[] = [];
  for (const [key, s] of sec.sections()) {
    if (!/^segment[0-9]+$/.test(key)) continue;
    if (segs.length >= MAX_SEGMENTS_PER_LV) fail(`${where} has more than ${MAX_SEGMENTS_PER_LV} segments`);
    segs.push(parseSegment(s, `${where} ${key}`));
  }
  const declared = sec.count('segment_count');
  if (declared !== undefined && declared !== segs.length) fail(`${where} declares ${declared} segments but has ${segs.length}`);
  segs.sort((a, b) => a.startExtent - b.startExtent);
  let next = 0;
  for (const s of segs) {
    if (s.startExtent !== next) fail(`${where} segments do not tile its extents (gap or overlap at extent ${next})`);
    next = s.startExtent + s.extentCount;
    if (!Number.isSafeInteger(next)) fail(`${where} is too large`);
  }
  return { name, status, segments: segs, extents: next };
}

/** Find the VG section in the top level and interpret it. */
export function parseVolumeGroup(root: LvmSection): VolumeGroupInfo {
  const candidates = root.sections().filter(([, s]) => s.get('seqno') !== undefined && s.get('physical_volumes') !== undefined);
  if (candidates.length !== 1) fail(`expected one volume group section, found ${candidates.length}`);
  const [name, vg] = candidates[0]!;
  const where = `VG ${name}`;
  const seqno = need(vg, 'seqno', where);
  const extentSize = need(vg, 'extent_size', where);
  if (extentSize === 0) fail(`${where} has extent_size 0`);
  const status = vg.strings('status');
  if (!status) fail(`${where} has no status list`);

  const pvSec = vg.section('physical_volumes');
  if (!pvSec) fail(`${where} has no physical_volumes section`);
  const pvs: PhysicalVolumeInfo[] = [];
  for (const [key, s] of pvSec.sections()) {
    const id = s.string('id');
    if (!id) fail(`${where} PV ${key} has no id`);
    const uuid = id.replace(/-/g, '');
    if (uuid.length !== 32) fail(`${where} PV ${key} has a malformed id`);
    pvs.push({ key, uuid, peStart: need(s, 'pe_start', `PV ${key}`), peCount: need(s, 'pe_count', `PV ${key}`) });
  }
  if (pvs.length === 0) fail(`${where} has no physical volumes`);

  const lvs: LogicalVolumeInfo[] = [];
  const lvSec = vg.section('logical_volumes');
  for (const [lvName, s] of lvSec?.sections() ?? []) {
    if (lvs.length >= MAX_LVS) fail(`${where} has more than ${MAX_LVS} LVs`);
    lvs.push(parseLv(lvName, s));
  }
  return { name, seqno, status, extentSize, pvs, lvs };
}
