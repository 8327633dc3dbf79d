/** The image formats sparsify knows, by qemu-img name. */
import type { FormatDriver } from './types.js';
import { rawDriver } from './raw-driver.js';

const DRIVERS: FormatDriver[] = [rawDriver];

export function formatDrivers(): readonly FormatDriver[] {
  return DRIVERS;
}

export function findDriver(name: string): FormatDriver | undefined {
  return DRIVERS.find((d) => d.name === name);
}
