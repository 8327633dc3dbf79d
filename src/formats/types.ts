/**
 * The virtual disk seen through an image format: every format driver produces a DiskImage,
 * every writer consumes plain data writes. Offsets are virtual-disk byte offsets.
 */

/** How a virtual range is backed: real data, a range the format says reads as zero, or nothing at all. */
export type ExtentKind = 'data' | 'zero' | 'unallocated';

export interface ImageExtent {
  start: number;
  end: number;
  kind: ExtentKind;
}

/** One file in an image's chain, top layer first; reported by --analyze. */
export interface LayerInfo {
  path: string;
  format: string;
  virtualSize: number;
  /** Bytes the file occupies on the host (st_blocks * 512). */
  allocatedBytes: number;
  /** Format-specific facts worth showing (cluster size, subformat, compat...). */
  details?: Record<string, string | number | boolean>;
}

export interface DiskImage {
  /** Format name as qemu-img names it: raw, qcow2, vdi, vmdk, vpc, vhdx. */
  readonly format: string;
  readonly path: string;
  readonly virtualSize: number;
  /** Fill `buf` entirely from virtual offset `offset`. Reading past virtualSize is an error. */
  read(buf: Buffer, offset: number): Promise<void>;
  /**
   * Allocation of [start, end) as ascending, contiguous extents covering the whole range.
   * Cost follows allocated metadata, not the size of the range.
   */
  extents(start: number, end: number): AsyncIterable<ImageExtent>;
  /** The files behind this image, top layer first. */
  layers(): LayerInfo[];
  close(): Promise<void>;
}

/** Writes a new image. Data arrives in ascending, non-overlapping writes; what is never written reads as zero. */
export interface ImageWriter {
  readonly format: string;
  write(buf: Buffer, offset: number): Promise<void>;
  /** Flush all metadata and data to disk. After this the image is complete. */
  finish(): Promise<void>;
  /** Give up: close and leave the file for the caller to delete. */
  abort(): Promise<void>;
}
