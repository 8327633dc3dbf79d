/** Raw images: the file is the disk. Allocation comes from SEEK_DATA/SEEK_HOLE. */
import { BlockFile } from '../io/file.js';
import { SparsifyError, hex } from '../io/errors.js';
import type { DiskImage, HostRun, ImageExtent, LayerInfo } from './types.js';

export class RawImage implements DiskImage {
  readonly format = 'raw';

  private constructor(
    readonly file: BlockFile,
    private readonly allocated: number,
  ) {}

  static async open(file: BlockFile): Promise<RawImage> {
    return new RawImage(file, await file.allocatedBytes());
  }

  get path(): string {
    return this.file.path;
  }

  get virtualSize(): number {
    return this.file.size;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.virtualSize) {
      throw new SparsifyError(`${this.path}: read at ${hex(offset)} (+${buf.length}) past end of disk (${hex(this.virtualSize)})`);
    }
    await this.file.readExact(buf, offset);
  }

  async *extents(start: number, end: number): AsyncIterable<ImageExtent> {
    end = Math.min(end, this.virtualSize);
    let pos = start;
    while (pos < end) {
      const data = this.file.seekData(pos);
      if (data < 0 || data >= end) {
        yield { start: pos, end, kind: 'unallocated' };
        return;
      }
      if (data > pos) yield { start: pos, end: data, kind: 'unallocated' };
      const hole = Math.min(this.file.seekHole(data), end);
      // A file shrunk underneath us could make SEEK_HOLE go backwards; never loop on it.
      if (hole <= data) {
        yield { start: data, end, kind: 'data' };
        return;
      }
      yield { start: data, end: hole, kind: 'data' };
      pos = hole;
    }
  }

  /** The file is the disk: every data extent lies at its own offset. */
  async *hostRuns(start: number, end: number): AsyncIterable<HostRun> {
    for await (const e of this.extents(start, end)) if (e.kind === 'data') yield { start: e.start, end: e.end, file: this.file, fileOffset: e.start };
  }

  layers(): LayerInfo[] {
    return [{ path: this.path, format: 'raw', virtualSize: this.virtualSize, allocatedBytes: this.allocated }];
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}
