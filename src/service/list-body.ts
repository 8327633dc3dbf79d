/**
 * The disk list's JSON body, kept encoded in blocks of views: while jobs run, a few disks change
 * between two requests, and re-encoding only their blocks costs a fraction of joining and
 * encoding 1.5 MB (which held the main thread 8-20 ms per request on this project's 2-core box).
 */
const PER_BLOCK = 64;

export interface EncodedBody {
  chunks: Buffer[];
  length: number;
}

export class BlockedJson {
  private ids: string[] = [];
  private readonly pos = new Map<string, number>();
  private blocks: Array<Buffer | undefined> = [];
  private body: EncodedBody | undefined;
  private readonly prefix: Buffer;
  private readonly suffix: Buffer;

  /** `prefix` + the members' JSON joined by commas + `suffix`. */
  constructor(prefix: string, suffix: string) {
    this.prefix = Buffer.from(prefix);
    this.suffix = Buffer.from(suffix);
  }

  /** The members or their order changed: every block is made again. */
  reset(ids: string[]): void {
    this.ids = ids;
    this.pos.clear();
    ids.forEach((id, i) => this.pos.set(id, i));
    this.blocks = new Array<Buffer | undefined>(Math.ceil(ids.length / PER_BLOCK));
    this.body = undefined;
  }

  /** One member's JSON changed. */
  touch(id: string): void {
    const i = this.pos.get(id);
    if (i === undefined) return;
    this.blocks[Math.floor(i / PER_BLOCK)] = undefined;
    this.body = undefined;
  }

  /** The body, as chunks to write in order; blocks are immutable once made, so a response may still be writing old ones. */
  encode(jsonOf: (id: string) => string): EncodedBody {
    if (this.body) return this.body;
    const chunks: Buffer[] = [this.prefix];
    for (let b = 0; b < this.blocks.length; b++) {
      this.blocks[b] ??= Buffer.from((b ? ',' : '') + this.ids.slice(b * PER_BLOCK, (b + 1) * PER_BLOCK).map(jsonOf).join(','));
      chunks.push(this.blocks[b]!);
    }
    chunks.push(this.suffix);
    this.body = { chunks, length: chunks.reduce((n, c) => n + c.length, 0) };
    return this.body;
  }
}
