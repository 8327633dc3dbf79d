/**
 * LVM2 physical volumes: find the label, read the newest committed VG metadata, expose the plain
 * LVs of this PV as /dev/VG/LV volumes and report the PV's unused extents as free (virt-sparsify
 * reclaims VG free space). Anything we cannot be sure about keeps the whole PV, with a warning.
 */
import { Extents } from '../io/extents.js';
import { CorruptError, hex } from '../io/errors.js';
import type { ChildVolume, ContainerAnalysis, ContainerReader } from './types.js';
import { Volume } from './volume.js';
import { findLabel, readLabel, readMetadataArea, SECTOR } from './lvm-label.js';
import { parseLvmText } from './lvm-text.js';
import { parseVolumeGroup, type VolumeGroupInfo } from './lvm-vg.js';
import { extentUse, lvRoles, mapLogicalVolume, type PvPlacement } from './lvm-map.js';

function keepWhole(warnings: string[], info: string[] = [], details?: ContainerAnalysis['details']): ContainerAnalysis {
  return { type: 'lvm2', children: [], free: new Extents(), warnings, info, details };
}

/** Format a 32-character PV UUID the way LVM prints it (6-4-4-4-4-4-6). */
function formatUuid(u: string): string {
  const parts = [6, 4, 4, 4, 4, 4, 6];
  let pos = 0;
  return parts.map((n) => u.slice(pos, (pos += n))).join('-');
}

/** Read and parse every metadata area; any bad copy, or copies that disagree, is a problem. */
async function newestMetadata(volume: Volume, areas: { offset: number; size: number }[]): Promise<{ vg?: VolumeGroupInfo; problems: string[]; none: string[] }> {
  const problems: string[] = [];
  const none: string[] = [];
  let best: VolumeGroupInfo | undefined;
  const seqnos = new Set<number>();
  for (const area of areas) {
    const r = await readMetadataArea(volume, area);
    if (r.kind === 'bad') problems.push(r.why);
    else if (r.kind === 'none') none.push(r.why);
    else {
      try {
        const vg = parseVolumeGroup(parseLvmText(r.meta.text));
        seqnos.add(vg.seqno);
        if (!best || vg.seqno > best.seqno) best = vg;
      } catch (e) {
        if (!(e instanceof CorruptError)) throw e;
        problems.push(`${e.message} (metadata area at ${hex(r.meta.areaOffset)})`);
      }
    }
  }
  // Two copies on one PV that disagree mean an interrupted update: do not pick one.
  if (seqnos.size > 1) problems.push(`the metadata areas hold different versions (seqno ${[...seqnos].join(', ')})`);
  return { vg: best, problems, none };
}

export async function analyzeLvm(volume: Volume): Promise<ContainerAnalysis> {
  const sector = await findLabel(volume);
  if (sector === null) throw new CorruptError(`lvm2: no LABELONE label in the first 4 sectors of ${volume.name}`);
  const label = await readLabel(volume, sector);
  const uuid = formatUuid(label.uuid);
  const details: ContainerAnalysis['details'] = { pv_uuid: uuid };
  if (!label.crcOk) return keepWhole([`LVM2 PV label at ${hex(label.labelOffset)} has a bad checksum; PV kept whole`], [], details);
  if (label.metadataAreas.length === 0) {
    return keepWhole([`LVM2 PV ${uuid} has no metadata area (its VG metadata lives on other PVs); PV kept whole`], [], details);
  }
  const { vg, problems, none } = await newestMetadata(volume, label.metadataAreas);
  if (problems.length > 0) return keepWhole(problems.map((p) => `${p.startsWith('lvm2:') ? p : `LVM2 ${p}`}; PV kept whole`), [], details);
  if (!vg) return keepWhole([], [`LVM2 PV ${uuid} belongs to no volume group (${none.join('; ')}); kept whole`], details);
  details.vg = vg.name;
  details.seqno = vg.seqno;
  details.extent_size = vg.extentSize * SECTOR;
  const pv = vg.pvs.find((p) => p.uuid === label.uuid);
  if (!pv) return keepWhole([`LVM2 VG ${vg.name} metadata does not list this PV (${uuid}); PV kept whole`], [], details);
  details.pe_start = pv.peStart * SECTOR;
  details.pe_count = pv.peCount;
  if (vg.pvs.length > 1) {
    return keepWhole([`LVM2 VG ${vg.name} spans ${vg.pvs.length} physical volumes and only one is analyzed at a time; PV kept whole`], [], details);
  }

  const ext = vg.extentSize * SECTOR;
  const dataStart = pv.peStart * SECTOR;
  const dataEnd = dataStart + pv.peCount * ext;
  if (!Number.isSafeInteger(dataEnd) || dataEnd > volume.size) {
    return keepWhole([`LVM2 VG ${vg.name}: PV extents end at ${hex(dataEnd)}, past the end of the volume (${hex(volume.size)}); PV kept whole`], [], details);
  }
  for (const a of label.metadataAreas) {
    if (a.offset < dataEnd && a.offset + a.size > dataStart) {
      return keepWhole([`LVM2 VG ${vg.name}: metadata area at ${hex(a.offset)} overlaps the extents; PV kept whole`], [], details);
    }
  }
  const use = extentUse(vg);
  if (use.problem) return keepWhole([`LVM2 VG ${vg.name}: ${use.problem}; PV kept whole`], [], details);

  const warnings: string[] = [];
  const info: string[] = [];
  const children: ChildVolume[] = [];
  const placements = new Map<string, PvPlacement>([[pv.key, { volume, info: pv }]]);
  const roles = lvRoles(vg);
  for (const lv of vg.lvs) {
    const role = roles.get(lv.name)!;
    const name = `/dev/${vg.name}/${lv.name}`;
    if (role.kind === 'hidden') continue;
    if (role.kind === 'special') {
      warnings.push(`LVM2 LV ${name} is ${role.why}; kept whole`);
      continue;
    }
    if (role.kind === 'read-only') {
      info.push(`LVM2 LV ${name} is read-only; kept whole`);
      continue;
    }
    const segs = mapLogicalVolume(vg, lv, placements);
    if (typeof segs === 'string') {
      warnings.push(`LVM2 LV ${name} cannot be mapped (${segs}); kept whole`);
      continue;
    }
    const types = [...new Set(lv.segments.map((s) => (s.stripes!.length > 1 ? 'striped' : 'linear')))].join(',');
    children.push({
      volume: new Volume(volume.image, name, segs),
      details: { vg: vg.name, lv: lv.name, segments: lv.segments.length, type: types, size: lv.extents * ext },
    });
  }

  const usedBytes = (use.used.get(pv.key) ?? new Extents()).toArray().map((r) => ({ start: dataStart + r.start * ext, end: dataStart + r.end * ext }));
  const free = vg.status.includes('WRITE') ? Extents.of(dataStart, dataEnd).subtract(new Extents(usedBytes)) : new Extents();
  if (!vg.status.includes('WRITE')) info.push(`LVM2 VG ${vg.name} is read-only; its free extents are kept`);
  details.free_extents = free.total() / ext;
  return { type: 'lvm2', children, free, warnings, info, details };
}

export const lvmReader: ContainerReader = {
  name: 'lvm2',
  scope: 'any',
  async probe(volume: Volume): Promise<boolean> {
    return (await findLabel(volume)) !== null;
  },
  analyze: analyzeLvm,
};
