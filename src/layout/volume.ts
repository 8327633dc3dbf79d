/**
 * A volume is a byte range of the virtual disk that holds one thing: the whole disk, a partition,
 * an LVM logical volume, an unlocked LUKS payload. It is a list of segments in disk coordinates,
 * so a filesystem reads through it the same way whether it sits in a partition or in a striped LV.
 */
import { Extents, type Range } from '../io/extents.js';
import { SparsifyError, hex } from '../io/errors.js';

/** `length` bytes at volume offset `volumeOffset` live at disk offset `diskOffset`. */
export interface Segment {
  readonly volumeOffset: number;
  readonly diskOffset: number;
  readonly length: number;
}

/**
 * What a volume reads its segments from, in disk coordinates: the disk image itself, or a view of
 * it that decrypts a LUKS payload (same coordinates, since ciphertext maps 1:1 to plaintext).
 */
export interface VolumeSource {
  readonly virtualSize: number;
  read(buf: Buffer, offset: number): Promise<void>;
}

export class Volume {
  readonly size: number;

  /**
   * @param name libguestfs-style device name: /dev/sda, /dev/sda1, /dev/VG/LV
   * @param segments ascending, contiguous in volume coordinates starting at 0
   */
  constructor(
    readonly image: VolumeSource,
    readonly name: string,
    readonly segments: readonly Segment[],
  ) {
    let expected = 0;
    for (const s of segments) {
      if (s.volumeOffset !== expected || s.length <= 0 || s.diskOffset < 0 || s.diskOffset + s.length > image.virtualSize) {
        throw new SparsifyError(`${name}: segment at volume offset ${hex(s.volumeOffset)} does not fit the disk`);
      }
      expected += s.length;
    }
    this.size = expected;
  }

  /** The whole disk as a volume. */
  static whole(image: VolumeSource, name: string): Volume {
    return new Volume(image, name, image.virtualSize > 0 ? [{ volumeOffset: 0, diskOffset: 0, length: image.virtualSize }] : []);
  }

  /** A contiguous sub-range of this volume (a partition of a disk, a PV's data area...). */
  slice(name: string, offset: number, length: number): Volume {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new SparsifyError(`${name}: range ${hex(offset)}+${hex(length)} lies outside ${this.name} (size ${hex(this.size)})`);
    }
    return new Volume(this.image, name, this.mapRange(offset, length));
  }

  /** Disk offset of the volume's first byte. */
  get diskStart(): number {
    return this.segments[0]?.diskOffset ?? 0;
  }

  private segmentIndex(offset: number): number {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.volumeOffset <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The disk pieces behind [offset, offset+length) of this volume, as segments of a new volume. */
  mapRange(offset: number, length: number): Segment[] {
    const out: Segment[] = [];
    if (length <= 0) return out;
    let i = this.segmentIndex(offset);
    let pos = offset;
    const end = offset + length;
    while (pos < end && i < this.segments.length) {
      const s = this.segments[i]!;
      const within = pos - s.volumeOffset;
      const n = Math.min(s.length - within, end - pos);
      out.push({ volumeOffset: pos - offset, diskOffset: s.diskOffset + within, length: n });
      pos += n;
      i++;
    }
    return out;
  }

  /** Fill `buf` from volume offset `offset`. */
  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) {
      throw new SparsifyError(`${this.name}: read at ${hex(offset)} (+${buf.length}) lies beyond the end of the volume (size ${hex(this.size)})`);
    }
    for (const piece of this.mapRange(offset, buf.length)) {
      await this.image.read(buf.subarray(piece.volumeOffset, piece.volumeOffset + piece.length), piece.diskOffset);
    }
  }

  /** Read `length` bytes at `offset` into a new buffer. */
  async readAt(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.read(buf, offset);
    return buf;
  }

  /** Translate ranges in volume coordinates to disk coordinates. */
  toDisk(ranges: Extents): Extents {
    const inside = ranges.clip(0, this.size);
    // One segment (a disk, a partition): a shift, with no per-range objects.
    if (this.segments.length === 1) return inside.shift(this.segments[0]!.diskOffset);
    const out: Range[] = [];
    let i = 0;
    for (const r of inside) {
      while (i < this.segments.length && this.segments[i]!.volumeOffset + this.segments[i]!.length <= r.start) i++;
      for (let k = i; k < this.segments.length && this.segments[k]!.volumeOffset < r.end; k++) {
        const seg = this.segments[k]!;
        const s = Math.max(r.start, seg.volumeOffset);
        const e = Math.min(r.end, seg.volumeOffset + seg.length);
        out.push({ start: seg.diskOffset + (s - seg.volumeOffset), end: seg.diskOffset + (e - seg.volumeOffset) });
      }
    }
    return new Extents(out);
  }

  /** Translate ranges in disk coordinates to this volume's coordinates; what lies outside it is dropped. */
  fromDisk(ranges: Extents): Extents {
    const out: Range[] = [];
    for (const s of this.segments) {
      for (const r of ranges.clip(s.diskOffset, s.diskOffset + s.length)) {
        out.push({ start: r.start - s.diskOffset + s.volumeOffset, end: r.end - s.diskOffset + s.volumeOffset });
      }
    }
    return new Extents(out);
  }

  /** The disk ranges this volume occupies. */
  diskExtents(): Extents {
    return new Extents(this.segments.map((s) => ({ start: s.diskOffset, end: s.diskOffset + s.length })));
  }
}
