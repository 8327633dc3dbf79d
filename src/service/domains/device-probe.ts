/**
 * Block devices in a storage domain: the domain holds a symlink to the device, as VDSM's images
 * tree does for logical volumes (images/IMG/VOL -> /dev/VG/VOL). Such an entry is a disk when its
 * target is a block device; it is named, keyed and followed by the symlink (the same on every host,
 * wherever its target's device numbers land), and described by what Linux says of the device.
 * Nothing else a symlink may lead to is a disk: a link to a file could lead out of the domain.
 */
import { closeSync, constants, openSync, realpathSync, statSync, type Stats } from 'node:fs';
import { deviceDiscardInfo } from '../../index.js';
import * as sys from '../../io/syscalls.js';
import type { DeviceFacts } from '../store/records.js';
import { statKey } from './stat-key.js';

/** Does this symlink lead to a block device? (Cheap: for listing.) */
export function isDeviceLink(full: string): boolean {
  try {
    return statSync(full).isBlockDevice();
  } catch {
    return false;
  }
}

/** The device a symlink leads to, with its facts; undefined when it leads to anything else (or nowhere). */
export function deviceBehind(full: string): DeviceFacts | undefined {
  let st: Stats;
  try {
    st = statSync(full);
  } catch {
    return undefined;
  }
  if (!st.isBlockDevice()) return undefined;
  let size: number;
  try {
    const fd = openSync(full, 'r');
    try {
      size = sys.blockDeviceSize(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  const info = deviceDiscardInfo(st.rdev);
  let target = full;
  try {
    target = realpathSync(full);
  } catch {
    // keep the link's own path
  }
  return { target, size, discardMaxBytes: info.maxBytes ?? null, discardGranularity: info.granularity ?? null, provisioningMode: info.provisioningMode ?? null, held: heldByKernel(full) };
}

/**
 * Is the device mounted, used as swap, or claimed by RAID, LVM or device-mapper? Then an exclusive
 * open (O_EXCL on a block device) fails with EBUSY. A filesystem mounted on the host changes under
 * any analysis: sparsifying it would discard blocks it is about to use. (QEMU does not open
 * exclusively; its image locks tell a running VM.)
 */
function heldByKernel(full: string): boolean {
  try {
    closeSync(openSync(full, constants.O_RDONLY | constants.O_EXCL));
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EBUSY';
  }
}

/**
 * The stat key of a device disk: the symlink's identity and the device's capacity. Writes to the
 * device change nothing stat shows, so its analysis is also made again after every job and when
 * it grows old (see the scanner).
 */
export function deviceKey(link: Pick<Stats, 'ino' | 'mtimeMs' | 'ctimeMs'>, device: Pick<DeviceFacts, 'size'>): string {
  return statKey({ ino: link.ino, size: device.size, mtimeMs: link.mtimeMs, ctimeMs: link.ctimeMs, blocks: Math.ceil(device.size / 512) });
}
