/**
 * analyze: walk a disk image and build its DiskMap. Each volume is offered to the partition
 * tables (whole disk only), then containers, then filesystems. Whatever cannot be read with
 * confidence is kept whole, with a warning saying why; a reader's failure never stops the walk.
 */
import { Extents } from '../io/extents.js';
import { FatalError, SparsifyError } from '../io/errors.js';
import type { DiskImage, ImageExtent } from '../formats/types.js';
import { Volume } from '../layout/volume.js';
import type { ContainerAnalysis, ContainerReader } from '../layout/types.js';
import type { KeyProvider } from '../layout/luks/keys.js';
import type { FsReader } from '../fs/types.js';
import { identifyForeign, type ForeignKind } from '../fs/foreign.js';
import { FILESYSTEMS, PARTITION_TABLES, VOLUME_CONTAINERS } from './registry.js';
import type { ContentKind, DiskMap, MapNode, VolumeRole } from './diskmap.js';
import { walk } from './diskmap.js';
import { allocationUnit } from './reclaim.js';

export interface AnalyzeOptions {
  /** Name of the whole disk; libguestfs calls the first disk /dev/sda. */
  diskName?: string;
  /** Called with a short trace line for each step (for -x / -v). */
  trace?: (msg: string) => void;
  /**
   * Keys for LUKS volumes (the CLI's --key options, the service's keys file). A volume with a key
   * is opened and analyzed inside; one without is kept whole. A key that opens nothing is an error.
   * The provider stays the caller's: it is not disposed here.
   */
  keys?: KeyProvider;
}

const MAX_DEPTH = 8;

const FOREIGN_KIND: Record<ForeignKind, ContentKind> = { filesystem: 'filesystem', encrypted: 'encrypted', member: 'unknown' };
const FOREIGN_NOUN: Record<ForeignKind, string> = { filesystem: 'filesystem', encrypted: 'volume', member: 'volume member' };

function errorText(e: unknown): string {
  if (e instanceof SparsifyError) return e.message;
  // A bug or a malformed structure our bounds checks missed: still never lose data.
  return `internal error while reading it (${e instanceof Error ? e.message : String(e)})`;
}

function contentKindOf(container: string): ContentKind {
  if (container === 'gpt' || container === 'mbr') return 'partition-table';
  if (container.startsWith('luks')) return 'encrypted';
  if (container.startsWith('lvm')) return 'volume-group';
  return 'unknown';
}

async function probeAll<T extends { probe(v: Volume): Promise<boolean>; name: string }>(readers: readonly T[], vol: Volume, warnings: string[]): Promise<T | undefined> {
  for (const r of readers) {
    try {
      if (await r.probe(vol)) return r;
    } catch (e) {
      if (e instanceof FatalError) throw e;
      warnings.push(`probing for ${r.name} failed: ${errorText(e)}`);
    }
  }
  return undefined;
}

/**
 * Round the free space of every node under an unlocked LUKS payload inward to whole encryption
 * sectors (counted from the payload's start): dropping part of a ciphertext sector would garble
 * the rest of it. --zero gets the same rounding of the device's ranges.
 */
function alignToCryptSectors(node: MapNode, enc: NonNullable<ContainerAnalysis['encrypted']>): void {
  const align = (r: Extents): Extents => enc.payload.toDisk(enc.payload.fromDisk(r).alignInward(enc.sectorSize));
  for (const n of walk(node)) {
    n.free = align(n.free);
    n.zeroRanges = align(n.zeroRanges ?? n.diskRanges);
  }
}

class Analyzer {
  /** Zero the volume keys of unlocked containers; run when the analysis ends, however it ends. */
  readonly wipes: Array<() => void> = [];

  constructor(
    /** The image's data extents: a volume with none of them is empty. */
    private readonly data: Extents,
    private readonly trace: (msg: string) => void,
    private readonly keys: KeyProvider | undefined,
  ) {}

  private newNode(vol: Volume, role: VolumeRole, details: MapNode['details']): MapNode {
    return {
      device: vol.name,
      role,
      offset: vol.diskStart,
      size: vol.size,
      diskRanges: vol.diskExtents(),
      content: 'unknown',
      contentKind: 'unknown',
      trusted: false,
      free: new Extents(),
      warnings: [],
      info: [],
      details,
      children: [],
    };
  }

  async volume(vol: Volume, role: VolumeRole, depth: number, details: MapNode['details'] = {}): Promise<MapNode> {
    const node = this.newNode(vol, role, details);
    this.trace(`examining ${vol.name} (${vol.size} bytes)`);
    if (depth > MAX_DEPTH) {
      node.warnings.push('volumes nested too deeply; kept as it is');
      return node;
    }
    const containers = role === 'disk' ? [...PARTITION_TABLES, ...VOLUME_CONTAINERS] : VOLUME_CONTAINERS;
    const container = await probeAll(containers, vol, node.warnings);
    if (container) return this.container(node, vol, container, depth);
    const fs = await probeAll(FILESYSTEMS, vol, node.warnings);
    if (fs) return this.filesystem(node, vol, fs);
    if (!vol.diskExtents().intersect(this.data).isEmpty) {
      const foreign = await identifyForeign(vol).catch(() => undefined);
      if (foreign) {
        node.content = foreign.type;
        node.contentKind = FOREIGN_KIND[foreign.kind];
        node.unsupported = true;
        node.warnings.push(`${foreign.type} ${FOREIGN_NOUN[foreign.kind]} is not supported; kept as it is`);
      } else node.warnings.push('no filesystem or volume recognised; kept as it is');
    } else {
      node.content = 'empty';
      node.contentKind = 'empty';
      node.trusted = true;
    }
    return node;
  }

  private async container(node: MapNode, vol: Volume, reader: ContainerReader, depth: number): Promise<MapNode> {
    node.content = reader.name;
    node.contentKind = contentKindOf(reader.name);
    try {
      const a = await reader.analyze(vol, { keys: this.keys, trace: this.trace });
      if (a.encrypted) this.wipes.push(a.encrypted.wipe);
      node.content = a.type;
      node.contentKind = contentKindOf(a.type);
      node.trusted = true;
      node.warnings.push(...a.warnings);
      node.info.push(...(a.info ?? []));
      Object.assign(node.details, a.details ?? {});
      node.free = vol.toDisk(a.free);
      const childRole: VolumeRole = node.contentKind === 'partition-table' ? 'partition' : 'logical-volume';
      for (const c of a.children) node.children.push(await this.volume(c.volume, childRole, depth + 1, c.details ?? {}));
      if (a.encrypted) for (const c of node.children) alignToCryptSectors(c, a.encrypted);
    } catch (e) {
      if (e instanceof FatalError) throw e;
      node.trusted = false;
      node.free = new Extents();
      node.children = [];
      node.warnings.push(`${reader.name}: ${errorText(e)}; kept as it is`);
    }
    return node;
  }

  private async filesystem(node: MapNode, vol: Volume, reader: FsReader): Promise<MapNode> {
    node.content = reader.name;
    node.contentKind = 'filesystem';
    try {
      const a = await reader.analyze(vol);
      node.content = a.type;
      node.contentKind = a.type === 'swap' ? 'swap' : 'filesystem';
      node.label = a.label;
      node.uuid = a.uuid;
      node.usedBytes = a.usedBytes;
      node.freeBytes = a.freeBytes;
      node.trusted = a.trusted;
      node.warnings.push(...a.warnings);
      node.info.push(...(a.info ?? []));
      Object.assign(node.details, { blockSize: a.blockSize, fsSize: a.size }, a.details ?? {});
      // A reader must never claim space outside itself; clip anyway, then map to disk coordinates.
      node.free = a.trusted ? vol.toDisk(a.free.clip(0, Math.min(a.size, vol.size))) : new Extents();
      this.trace(`${vol.name}: ${a.type}, ${a.freeBytes} bytes free${a.trusted ? '' : ' (not trusted)'}`);
    } catch (e) {
      // Not about this filesystem (a missing addon, a wrong key): it stops the run, as in probing.
      if (e instanceof FatalError) throw e;
      node.trusted = false;
      node.free = new Extents();
      node.warnings.push(`${reader.name}: ${errorText(e)}; kept as it is`);
    }
    return node;
  }
}

/** The ranges of `extents` that are data. */
async function dataOf(extents: AsyncIterable<ImageExtent>): Promise<Extents> {
  const out: Array<{ start: number; end: number }> = [];
  for await (const e of extents) if (e.kind === 'data') out.push({ start: e.start, end: e.end });
  return new Extents(out);
}

export async function analyzeDisk(image: DiskImage, opts: AnalyzeOptions = {}): Promise<DiskMap> {
  const trace = opts.trace ?? (() => undefined);
  const disk = Volume.whole(image, opts.diskName ?? '/dev/sda');
  const data = await dataOf(image.extents(0, image.virtualSize));
  const analyzer = new Analyzer(data, trace, opts.keys);
  let root: MapNode;
  try {
    root = await analyzer.volume(disk, 'disk', 0);
  } finally {
    for (const wipe of analyzer.wipes) wipe();
  }
  for (const id of opts.keys?.unmatched() ?? []) root.warnings.push(`--key ${id}: no encrypted volume has this device name or LUKS UUID; ignored`);
  const layers = image.layers();
  // A chain: only the top file's own clusters can be given back (every format that can have a
  // backing file says which are its own; without that we could only guess, so count them all).
  const ownData = layers.length > 1 && image.ownExtents ? await dataOf(image.ownExtents(0, image.virtualSize)) : data;
  return {
    path: image.path,
    format: image.format,
    virtualSize: image.virtualSize,
    allocatedBytes: layers.reduce((t, l) => t + l.allocatedBytes, 0),
    layers,
    root,
    data,
    dataBytes: data.total(),
    ownData,
    ownDataBytes: ownData.total(),
    allocationUnit: allocationUnit(layers[0]),
  };
}

export { reclaimableBytes } from './reclaim.js';
