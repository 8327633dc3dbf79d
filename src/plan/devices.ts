/** Matching the device names users give (--ignore, --zero) against the DiskMap, libguestfs style. */
import type { MapNode } from '../analyze/diskmap.js';
import { canonicalDevice, mapperToLvm } from '../layout/device-names.js';

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
