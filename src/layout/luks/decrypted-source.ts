/**
 * The plaintext of an unlocked LUKS payload, in disk coordinates. Ciphertext sector k of the
 * payload decrypts to plaintext sector k, so the plaintext can keep the ciphertext's disk offsets:
 * volumes inside (a filesystem, an LVM PV and its LVs) read through this source with the same
 * segments, and the free extents they report are already the ciphertext ranges to drop.
 *
 * A read is widened to whole encryption sectors, read from the payload and decrypted in bounded
 * chunks. Reads outside the payload are a bug in a reader and are refused.
 */
import { SparsifyError, hex } from '../../io/errors.js';
import type { Segment, Volume, VolumeSource } from '../volume.js';
import type { SectorCipher } from './sector-cipher.js';

const CHUNK = 1 << 20;

export class DecryptedSource implements VolumeSource {
  readonly virtualSize: number;
  /** The payload's segments sorted by disk offset, to map a disk offset back to a payload offset. */
  private readonly byDisk: Segment[];

  /** @param payload the ciphertext, as a volume of the LUKS container (whole sectors only) */
  constructor(
    private readonly payload: Volume,
    private readonly cipher: SectorCipher,
  ) {
    this.virtualSize = payload.image.virtualSize;
    this.byDisk = [...payload.segments].sort((a, b) => a.diskOffset - b.diskOffset);
  }

  private segmentAt(diskOffset: number): Segment | undefined {
    let lo = 0;
    let hi = this.byDisk.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.byDisk[mid]!;
      if (diskOffset < s.diskOffset) hi = mid - 1;
      else if (diskOffset >= s.diskOffset + s.length) lo = mid + 1;
      else return s;
    }
    return undefined;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const at = offset + done;
      const seg = this.segmentAt(at);
      if (!seg) throw new SparsifyError(`${this.payload.name}: read at disk offset ${hex(at)} lies outside the encrypted data`);
      const n = Math.min(buf.length - done, seg.diskOffset + seg.length - at);
      await this.readPlain(buf.subarray(done, done + n), seg.volumeOffset + (at - seg.diskOffset));
      done += n;
    }
  }

  /** Fill `out` with plaintext from payload offset `pos`. */
  private async readPlain(out: Buffer, pos: number): Promise<void> {
    const ss = this.cipher.sectorSize;
    const start = Math.floor(pos / ss) * ss;
    const end = Math.ceil((pos + out.length) / ss) * ss;
    for (let s = start; s < end; s += CHUNK) {
      const e = Math.min(end, s + CHUNK);
      const tmp = Buffer.allocUnsafe(e - s);
      await this.payload.read(tmp, s);
      this.cipher.decrypt(tmp, s / ss);
      const from = Math.max(pos, s);
      const to = Math.min(pos + out.length, e);
      tmp.copy(out, from - pos, from - s, to - s);
    }
  }
}
