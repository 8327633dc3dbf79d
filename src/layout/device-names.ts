/**
 * The other names of a device, as libguestfs accepts them: the layout readers name partitions
 * /dev/sdX N and logical volumes /dev/VG/LV, and users (--ignore, --zero, LUKS key selectors) may
 * name the same devices /dev/vdaN, /dev/hdaN, /dev/xvdaN or /dev/mapper/VG-LV.
 */

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
