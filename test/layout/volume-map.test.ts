import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Volume, type VolumeSource } from '../../src/layout/volume.js';
import { Extents } from '../../src/io/extents.js';

const source: VolumeSource = { virtualSize: 1 << 20, read: async () => undefined };

describe('Volume coordinates', { timeout: 10_000 }, () => {
  test('fromDisk is the inverse of toDisk on a scattered volume, and drops what lies outside it', () => {
    // Two segments out of disk order, as an LV's extents can be.
    const v = new Volume(source, '/dev/VG/LV', [
      { volumeOffset: 0, diskOffset: 0x80000, length: 0x10000 },
      { volumeOffset: 0x10000, diskOffset: 0x20000, length: 0x8000 },
    ]);
    const inVolume = new Extents([{ start: 0x100, end: 0x200 }, { start: 0xff00, end: 0x10100 }, { start: 0x17000, end: 0x18000 }]);
    const onDisk = v.toDisk(inVolume);
    assert.deepEqual(onDisk.toArray(), [
      { start: 0x20000, end: 0x20100 },
      { start: 0x27000, end: 0x28000 },
      { start: 0x80100, end: 0x80200 },
      { start: 0x8ff00, end: 0x90000 },
    ]);
    assert.deepEqual(v.fromDisk(onDisk).toArray(), inVolume.toArray());
    assert.deepEqual(v.fromDisk(Extents.of(0, 0x20000).union(Extents.of(0x90000, 0x100000))).toArray(), []);
    // Rounding to 4 KiB sectors happens in volume coordinates, whatever the disk offsets.
    const odd = new Volume(source, '/dev/mapper/cryptsda1', [{ volumeOffset: 0, diskOffset: 0x7e00, length: 0x10000 }]);
    const free = Extents.of(0x7e00 + 0x200, 0x7e00 + 0x3000);
    assert.deepEqual(odd.toDisk(odd.fromDisk(free).alignInward(4096)).toArray(), [{ start: 0x7e00 + 0x1000, end: 0x7e00 + 0x3000 }]);
  });
});
