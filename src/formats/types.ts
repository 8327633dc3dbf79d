import type { BlockFile } from '../io/file.js';

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

/** A run of virtual bytes stored as they are (not compressed) in a host file, at `fileOffset`. */
export interface HostRun {
  start: number;
  end: number;
  file: BlockFile;
  fileOffset: number;
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
  /**
   * Like `extents`, but of this image's own file(s) alone: 'unallocated' where this layer defers to
   * its backing file, 'zero' where it says zero whatever the backing file holds. Formats that cannot
   * have a backing file may leave it out: their own allocation is `extents`.
   */
  ownExtents?(start: number, end: number): AsyncIterable<ImageExtent>;
  /** The files behind this image, top layer first. */
  layers(): LayerInfo[];
  /**
   * Optional: the data in [start, end) that lies as it is in a host file, ascending, so a writer
   * can share or copy it without reading it. Ranges not listed must be read.
   */
  hostRuns?(start: number, end: number): AsyncIterable<HostRun>;
  close(): Promise<void>;
}

/** Ways a writer can take bytes straight from a host file: share its blocks, or let the kernel copy them. */
export type TransferMode = 'clone' | 'copy';

export interface TransferSupport {
  /** Bytes can be cloned in pieces whose virtual offsets, lengths and file offsets are multiples of `cloneAlignment`. */
  clone: boolean;
  cloneAlignment: number;
  /** Bytes can be copied by the kernel at any offsets. */
  copy: boolean;
}

/** Writes a new image. Data arrives in ascending, non-overlapping writes; what is never written reads as zero. */
export interface ImageWriter {
  readonly format: string;
  /** True when several write() calls may be in flight at once (they still never overlap). */
  readonly concurrentWrites?: boolean;
  /** The unit the output allocates in (the qcow2 cluster size), when it has one. */
  readonly allocationUnit?: number;
  /** Write `buf` at `offset`. The writer may read `buf` until the promise settles, not after. */
  write(buf: Buffer, offset: number): Promise<void>;
  /**
   * Optional: how this writer can take bytes from `source` without them passing through memory,
   * probed harmlessly with the data at `sampleOffset` of `source`.
   */
  transferSupport?(source: BlockFile, sampleOffset: number): Promise<TransferSupport>;
  /**
   * Optional: place `length` bytes at `fileOffset` of `source` at virtual `offset`, as write() would,
   * by cloning or copying them in the kernel. Resolves false when the host refused (nothing written;
   * the caller then writes the bytes itself).
   */
  transfer?(source: BlockFile, fileOffset: number, offset: number, length: number, mode: TransferMode): Promise<boolean>;
  /** Flush all metadata and data to disk. After this the image is complete. */
  finish(): Promise<void>;
  /** Give up: close and leave the file for the caller to delete. */
  abort(): Promise<void>;
}

/** What a format driver may ask of the code that opens it: its backing files, opened by the same rules. */
export interface OpenContext {
  /**
   * Open a backing file named inside an image. `path` is as stored in the image (relative paths are
   * relative to the referring image's folder; the caller resolves them). Loops and depth are checked here.
   */
  openBacking(path: string, format: string | undefined, referrer: string): Promise<DiskImage>;
}

/** Output options given with -o, already split: `cluster_size=65536,compat=1.1` -> Map. */
export type FormatOptions = ReadonlyMap<string, string>;

export interface WriterContext {
  /** Compress data clusters (--compress). */
  compress: boolean;
  /** Number of worker threads available for CPU-heavy work. */
  threads: number;
  /** The name the image gets once complete (writers get a temporary name; some formats record their own name). */
  finalPath?: string;
  /**
   * Make the output an overlay of this backing file (qcow2 only). What is never written then falls
   * through to the backing file, so a written all-zero cluster is stored as a zero cluster: it must
   * hide the backing file's data. `file` is recorded as given (relative to the output's folder).
   */
  backing?: { file: string; format?: string };
}

export interface FormatDriver {
  /** qemu-img's name: raw, qcow2, vdi, vmdk, vpc, vhdx. */
  readonly name: string;
  /** Does this header (the first 64 KiB or less of the file) belong to this format? */
  probe(head: Buffer): boolean;
  open(file: BlockFile, ctx: OpenContext): Promise<DiskImage>;
  /** Valid -o keys with a one-line description each, for the error listing them. */
  readonly createOptions?: ReadonlyMap<string, string>;
  /** Create a new image at `path` (a temporary name; the caller renames it when done). */
  createWriter?(path: string, virtualSize: number, options: FormatOptions, ctx: WriterContext): Promise<ImageWriter>;
}
