/**
 * From a volume group to what the analyzer may use: which LVs become child volumes (plain
 * linear/striped, writable, visible, not part of a snapshot/thin/raid/cache/mirror stack), which
 * extents of a PV no LV uses, and the disk segments behind an LV.
 *
 * Everything an LV's segments name counts as used, whatever its type, so free extents never
 * include space of a kind we do not understand; when a non-striped segment names a PV directly
 * (pvmove, old mirrors) we cannot tell its extents and report no free space at all.
 */
import { Extents } from '../io/extents.js';
import { hex } from '../io/errors.js';
import type { Segment, Volume } from './volume.js';
import { isStripedType, type LogicalVolumeInfo, type PhysicalVolumeInfo, type VolumeGroupInfo } from './lvm-vg.js';
import { SECTOR } from './lvm-label.js';

/** Stripe chunks per LV before we give up mapping it (keeps the segment list bounded). */
export const MAX_LV_PIECES = 1 << 18;

export interface ExtentUse {
  /** Used extent ranges [start, end) per PV key. */
  used: Map<string, Extents>;
  /** Why the PVs' usage cannot be known, when it cannot. */
  problem?: string;
}

/** The extents of each PV that some LV segment occupies; overlaps and overruns are problems. */
export function extentUse(vg: VolumeGroupInfo): ExtentUse {
  const pvByKey = new Map(vg.pvs.map((p) => [p.key, p]));
  const ranges = new Map<string, { start: number; end: number; lv: string }[]>();
  for (const lv of vg.lvs) {
    for (const seg of lv.segments) {
      if (!isStripedType(seg.type)) {
        const pv = seg.refs.find((r) => pvByKey.has(r));
        if (pv !== undefined) return { used: new Map(), problem: `LV ${lv.name} has a ${seg.type} segment placed directly on ${pv}` };
        continue;
      }
      const areaLen = seg.extentCount / seg.stripes!.length;
      for (const st of seg.stripes!) {
        const pv = pvByKey.get(st.name);
        if (!pv) continue; // an area on another LV: that LV's own segments hold the extents
        if (st.start + areaLen > pv.peCount) {
          return { used: new Map(), problem: `LV ${lv.name} uses extents ${st.start}..${st.start + areaLen - 1} of ${pv.key}, which has only ${pv.peCount}` };
        }
        let list = ranges.get(pv.key);
        if (!list) ranges.set(pv.key, (list = []));
        list.push({ start: st.start, end: st.start + areaLen, lv: lv.name });
      }
    }
  }
  const used = new Map<string, Extents>();
  for (const [key, list] of ranges) {
    list.sort((a, b) => a.start - b.start);
    for (let i = 1; i < list.length; i++) {
      if (list[i]!.start < list[i - 1]!.end) {
        return { used: new Map(), problem: `LVs ${list[i - 1]!.lv} and ${list[i]!.lv} both claim extent ${list[i]!.start} of ${key}` };
      }
    }
    used.set(key, new Extents(list));
  }
  return { used };
}

export type LvRole =
  | { kind: 'plain' }
  | { kind: 'hidden' }
  | { kind: 'read-only' }
  | { kind: 'special'; why: string };

/** Classify every LV: only 'plain' ones may be exposed and analyzed. */
export function lvRoles(vg: VolumeGroupInfo): Map<string, LvRole> {
  const names = new Set(vg.lvs.map((l) => l.name));
  const pvKeys = new Set(vg.pvs.map((p) => p.key));
  // LVs that another LV's non-striped segment names (thin pool parts, raid images...).
  const usedBy = new Map<string, string>();
  // Old-style snapshots: an internal "snapshotN" LV ties the origin to the COW LV, which is the
  // one users know by name (lvs shows it as the snapshot); name both in warnings.
  const snapshot = new Map<string, string>();
  const internal = new Set<string>();
  for (const lv of vg.lvs) {
    for (const seg of lv.segments) {
      if (isStripedType(seg.type)) continue;
      const origin = seg.type === 'snapshot' ? seg.origin : undefined;
      const cow = seg.type === 'snapshot' ? seg.cow : undefined;
      if (origin !== undefined && cow !== undefined) {
        internal.add(lv.name);
        snapshot.set(cow, `a snapshot of ${origin}`);
        if (!snapshot.has(origin)) snapshot.set(origin, `the origin of snapshot ${cow}`);
      }
      for (const r of seg.refs) if (names.has(r) && r !== lv.name && !usedBy.has(r)) usedBy.set(r, `${seg.type} ${lv.name}`);
    }
  }
  const vgWritable = vg.status.includes('WRITE');
  const roles = new Map<string, LvRole>();
  for (const lv of vg.lvs) {
    const other = lv.segments.find((s) => !isStripedType(s.type));
    const stacked = lv.segments.flatMap((s) => s.stripes ?? []).find((a) => !pvKeys.has(a.name));
    const visible = lv.status.includes('VISIBLE');
    let role: LvRole;
    if (internal.has(lv.name)) role = { kind: 'hidden' };
    else if (snapshot.has(lv.name)) role = { kind: 'special', why: snapshot.get(lv.name)! };
    else if (!visible) role = { kind: 'hidden' };
    else if (other) role = { kind: 'special', why: `a ${other.type} LV` };
    else if (stacked) role = { kind: 'special', why: names.has(stacked.name) ? `stacked on LV ${stacked.name}` : `placed on unknown ${stacked.name}` };
    else if (usedBy.has(lv.name)) role = { kind: 'special', why: `used by ${usedBy.get(lv.name)}` };
    else if (!lv.status.includes('WRITE') || !vgWritable) role = { kind: 'read-only' };
    else role = { kind: 'plain' };
    roles.set(lv.name, role);
  }
  return roles;
}

/** Where a PV's extents start: its volume and pe_start in bytes. */
export interface PvPlacement {
  volume: Volume;
  info: PhysicalVolumeInfo;
}

/**
 * The disk segments behind an LV made only of striped/linear segments on the given PVs.
 * Returns a reason string instead when it cannot be mapped exactly.
 */
export function mapLogicalVolume(vg: VolumeGroupInfo, lv: LogicalVolumeInfo, pvs: ReadonlyMap<string, PvPlacement>): Segment[] | string {
  const ext = vg.extentSize * SECTOR;
  const out: Segment[] = [];
  let lvOff = 0;
  const add = (pv: PvPlacement, pe: number, within: number, length: number): void => {
    const pvOff = pv.info.peStart * SECTOR + pe * ext + within;
    for (const p of pv.volume.mapRange(pvOff, length)) {
      const last = out[out.length - 1];
      if (last && last.diskOffset + last.length === p.diskOffset) out[out.length - 1] = { ...last, length: last.length + p.length };
      else out.push({ volumeOffset: lvOff + p.volumeOffset, diskOffset: p.diskOffset, length: p.length });
    }
    lvOff += length;
  };
  for (const seg of lv.segments) {
    if (!isStripedType(seg.type) || !seg.stripes) return `segment type ${seg.type}`;
    const n = seg.stripes.length;
    const areas: PvPlacement[] = [];
    for (const st of seg.stripes) {
      const pv = pvs.get(st.name);
      if (!pv) return `its extents on ${st.name} are not on this disk`;
      const areaEnd = pv.info.peStart * SECTOR + (st.start + seg.extentCount / n) * ext;
      if (areaEnd > pv.volume.size) return `its extents on ${st.name} run past the end of ${pv.volume.name} (${hex(pv.volume.size)})`;
      areas.push(pv);
    }
    const areaBytes = (seg.extentCount / n) * ext;
    if (n === 1) {
      add(areas[0]!, seg.stripes[0]!.start, 0, areaBytes);
      continue;
    }
    // dm-stripe: chunk c of the segment is chunk floor(c / n) of stripe c % n.
    const chunk = seg.stripeSize! * SECTOR;
    if (areaBytes % chunk !== 0) return `its stripe size ${hex(chunk)} does not divide the stripe length ${hex(areaBytes)}`;
    const rows = areaBytes / chunk;
    if (rows * n > MAX_LV_PIECES) return `it has more than ${MAX_LV_PIECES} stripe chunks`;
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < n; i++) add(areas[i]!, seg.stripes[i]!.start, r * chunk, chunk);
    }
    if (out.length > MAX_LV_PIECES) return `it has more than ${MAX_LV_PIECES} pieces`;
  }
  return out;
}
