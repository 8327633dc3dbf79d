/**
 * analyze: walk a disk image and build its DiskMap. Each volume is offered to the partition
 * tables (whole disk only), then containers, then filesystems. Whatever cannot be read with
 * confidence is kept whole, with a warning saying why; a reader's failure never stops the walk.
 */
import { Extents } from '../io/extents.js';
import { SparsifyError } from '../io/errors.js';
import type { DiskImage } from '../formats/types.js';
import { Volume } from '../layout/volume.js';
import type { ContainerReader } from '../layout/types.js';
import type { FsReader } from '../fs/types.js';
import { identifyForeign, type ForeignKind } from '../fs/foreign.js';
import { FILESYSTEMS, PARTITION_TABLES, VOLUME_CONTAINERS } from './registry.js';
import type { ContentKind, DiskMap, MapNode, VolumeRole } from './diskmap.js';
import { walk } from './diskmap.js';

export interface AnalyzeOptions {
  /** Name of the whole disk; libguestfs calls the first disk /dev/sda. */
  diskName?: string;
  /** Called with a short trace line for each step (for -x / -v). */
  trace?: (msg: string) => void;
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
      warnings.push(`probing for ${r.name} failed: ${errorText(e)}`);
    }
  }
  return undefined;
}

class Analyzer {
  constructor(
    /** The image's data extents: a volume with none of them is empty. */
    private readonly data: Extents,
    private readonly trace: (msg: string) => void,
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
      const a = await reader.analyze(vol);
      node.content = a.type;
      node.contentKind = contentKindOf(a.type);
      node.trusted = true;
      node.warnings.push(...a.warnings);
      node.info.push(...(a.info ?? []));
      Object.assign(node.details, a.details ?? {});
      node.free = vol.toDisk(a.free);
      const childRole: VolumeRole = node.contentKind === 'partition-table' ? 'partition' : 'logical-volume';
      for (const c of a.children) node.children.push(await this.volume(c.volume, childRole, depth + 1, c.details ?? {}));
    } catch (e) {
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
      node.trusted = false;
      node.free = new Extents();
      node.warnings.push(`${reader.name}: ${errorText(e)}; kept as it is`);
    }
    return node;
  }
}

/** The ranges the image actually has allocated as data. */
async function dataExtents(image: DiskImage): Promise<Extents> {
  const out: Array<{ start: number; end: number }> = [];
  for await (const e of image.extents(0, image.virtualSize)) if (e.kind === 'data') out.push({ start: e.start, end: e.end });
  return new Extents(out);
}

export async function analyzeDisk(image: DiskImage, opts: AnalyzeOptions = {}): Promise<DiskMap> {
  const trace = opts.trace ?? (() => undefined);
  const disk = Volume.whole(image, opts.diskName ?? '/dev/sda');
  const data = await dataExtents(image);
  const root = await new Analyzer(data, trace).volume(disk, 'disk', 0);
  const layers = image.layers();
  return {
    path: image.path,
    format: image.format,
    virtualSize: image.virtualSize,
    allocatedBytes: layers.reduce((t, l) => t + l.allocatedBytes, 0),
    layers,
    root,
    data,
    dataBytes: data.total(),
  };
}

/** Free bytes under `node` (itself and its children) that the image has allocated today. */
export function reclaimableBytes(map: DiskMap, node: MapNode = map.root): number {
  let total = 0;
  for (const n of walk(node)) total += n.free.intersect(map.data).total();
  return total;
}
