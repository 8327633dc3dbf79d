/** The image formats sparsify knows, by qemu-img name. Probing tries them in this order. */
import type { FormatDriver } from './types.js';
import { rawDriver } from './raw-driver.js';
import { qcow2Driver } from './qcow2/index.js';
import { vdiDriver } from './vdi.js';
import { vhdxDriver } from './vhdx/index.js';
import { vpcDriver } from './vhd.js';
import { vmdkDriver } from './vmdk/index.js';

/** vmdk last among the probed formats: its probe also accepts a text descriptor. */
const DRIVERS: FormatDriver[] = [qcow2Driver, vdiDriver, vhdxDriver, vpcDriver, vmdkDriver, rawDriver];

export function formatDrivers(): readonly FormatDriver[] {
  return DRIVERS;
}

export function findDriver(name: string): FormatDriver | undefined {
  return DRIVERS.find((d) => d.name === name);
}
