/** Matching the device names users give (--ignore, --zero) against the DiskMap, libguestfs style. */
import type { MapNode } from '../analyze/diskmap.js';

/** /dev/vda1, /dev/hda1 and /dev/xvda1 all mean /dev/sda1 to libguestfs. */
export function canonicalDevice(name: string): string {
  const m = /^\/dev\/(?:vd|hd|xvd|sd)([a-z]+)(\d*)$/.exec(name);
  if (m) return `/dev/sd${m[1]}${m[2]}`;
  return name.replace(/\/+$/, '');
}

/** /dev/mapper/VG-LV is another name for /dev/VG/LV ('--' in a name stands for '-'); undefined if not one. */
export function mapperToLvm(name: string): string | undefined {
  const m = /^\/dev\/mapper\/((?:[^-]|--)+)-((?:[^-]|--)+)$/.exec(name);
  return m ? `/dev/${m[1]!.replace(/--/g, '-')}/${m[2]!.replace(/--/g, '-')}` : undefined;
}

/** Does `spec` (a device, or a bare VG name) name this node? */
export function matches(spec: string, node: MapNode): boolean {
  const s = canonicalDevice(spec);
  if (canonicalDevice(node.device) === s) return true;
  // A bare VG name covers every LV of that VG and the VG's own free space.
  if (!s.startsWith('/dev/')) {
    if (node.role === 'logical-volume' && node.device.startsWith(`/dev/${s}/`)) return true;
    if (node.contentKind === 'volume-group' && node.details['vg'] === s) return true;
  }
  // /dev/mapper/VG-LV is another name for /dev/VG/LV.
  return mapperToLvm(s) === node.device;
}
