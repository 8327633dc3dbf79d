/**
 * Metadata updates through the VHDX log (MS-VHDX 2.2.2.1, 2.3; qemu block/vhdx-log.c).
 *
 * Headers are never logged; there are two, and the valid one with the higher sequence number is
 * current. A header update writes the non-current slot with the current contents, sequence + 1
 * and the changes, then fdatasyncs; done twice, both slots hold the new contents. The first update
 * of a session sets a new FileWriteGuid (and a new DataWriteGuid when the guest's data changes).
 *
 * A session: headers get a fresh LogGuid; then every batch of 4 KiB sectors (BAT sectors here) is
 *   1. written as one log entry at the start of the log, fdatasync (the entry is durable: a power
 *      cut from here on is repaired by replaying it, by us, qemu or Hyper-V);
 *   2. written to its places, fdatasync (the entry is no longer needed);
 * and at the end the headers get a zero LogGuid: nothing to replay. Each entry's Tail is itself
 * (everything before it is applied), so writing the next entry over it loses nothing: torn, the
 * new entry fails its CRC and the old one is either intact (replaying it rewrites what is already
 * there) or gone. Entries do not go round the circular log as qemu's do: qemu 7.2 replays the
 * entry that follows the newest one without checking its sequence number, so an older entry of
 * the same session lying there would be replayed over newer sectors; at the start of the log,
 * only pieces of older, longer entries can follow, and those are no entries at all.
 * The file is never shortened while a session is open (FlushedFileOffset).
 */
import type { BlockFile } from '../../io/file.js';
import { randomGuid } from '../common/blockwriter.js';
import { LOG_SECTOR, encodeEntry, maxSectorsPerEntry, type LogDescriptor } from './log-format.js';
import { HEADER1_AT, HEADER2_AT, MiB, vhdxCrc, type VhdxHeader } from './structures.js';

const ZERO_GUID = Buffer.alloc(16);

export interface HeaderChange {
  logGuid?: Buffer;
  /** Give the DataWriteGuid a new value (the guest-visible data changes). */
  newDataWriteGuid?: boolean;
}

export class VhdxLogWriter {
  private slot: number;
  private raw: Buffer;
  private readonly fileWriteGuid = randomGuid();
  private guid: Buffer | undefined;
  private sequence = 1n;
  /** Largest number of sectors one entry carries. */
  readonly capacity: number;

  constructor(
    private readonly file: BlockFile,
    current: VhdxHeader,
  ) {
    this.slot = current.at === HEADER1_AT ? 0 : 1;
    this.raw = Buffer.from(current.raw);
    this.capacity = maxSectorsPerEntry(current.logLength);
  }

  private get logOffset(): number {
    return Number(this.raw.readBigUInt64LE(72));
  }

  /** A session is open: entries may be pending in the log. */
  get active(): boolean {
    return this.guid !== undefined;
  }

  /** The current header's log GUID is not zero (a log to replay, or a session of ours). */
  get logGuidSet(): boolean {
    return !this.raw.subarray(48, 64).equals(ZERO_GUID);
  }

  /** Update both headers, one after the other, each made durable before the next. */
  async updateHeaders(change: HeaderChange): Promise<void> {
    const dataWrite = change.newDataWriteGuid ? randomGuid() : undefined;
    for (let k = 0; k < 2; k++) {
      const h = Buffer.from(this.raw);
      h.writeBigUInt64LE(this.raw.readBigUInt64LE(8) + 1n, 8);
      this.fileWriteGuid.copy(h, 16);
      dataWrite?.copy(h, 32);
      change.logGuid?.copy(h, 48);
      h.writeUInt32LE(vhdxCrc(h, 4), 4);
      const slot = 1 - this.slot;
      await this.file.write(h, slot === 0 ? HEADER1_AT : HEADER2_AT);
      await this.file.sync();
      this.slot = slot;
      this.raw = h;
    }
  }

  /** Open a session: a fresh log GUID in both headers. */
  async begin(o: { dataChanges: boolean }): Promise<void> {
    if (this.guid) return;
    const guid = randomGuid();
    await this.updateHeaders({ logGuid: guid, newDataWriteGuid: o.dataChanges });
    this.guid = guid;
    this.sequence = 1n;
  }

  /**
   * Close the session: a zero log GUID in both headers (also retires a replayed log). The log's
   * entries are dead then, so the space they took is given back where the storage can.
   */
  async end(): Promise<void> {
    await this.updateHeaders({ logGuid: ZERO_GUID });
    this.guid = undefined;
    if (await this.file.canRelease()) this.file.release(this.logOffset, this.raw.readUInt32LE(68));
  }

  /** Write `sectors` (4 KiB each, by file offset) through the log, in as few entries as fit. */
  async commit(sectors: ReadonlyMap<number, Buffer>): Promise<void> {
    const offsets = [...sectors.keys()].sort((a, b) => a - b);
    for (let i = 0; i < offsets.length; i += this.capacity) {
      const chunk = offsets.slice(i, i + this.capacity);
      await this.logEntry(chunk.map((o) => ({ kind: 'data', fileOffset: o, data: sectors.get(o)! })));
      await writeRuns(this.file, chunk, sectors);
      await this.file.sync();
    }
  }

  /**
   * Step 1 alone: write one entry at the start of the log and make it durable, without applying
   * it (what a power cut right after it leaves; tests build pending logs with it).
   */
  async logEntry(descriptors: LogDescriptor[]): Promise<void> {
    if (!this.guid) throw new Error('vhdx log: an entry outside a session');
    const size = Math.floor(this.file.size / MiB) * MiB;
    const entry = encodeEntry(this.guid, { sequence: this.sequence, tail: 0, flushedFileOffset: size, lastFileOffset: size, descriptors });
    if (entry.length > this.raw.readUInt32LE(68)) throw new Error('vhdx log: entry larger than the log');
    await this.file.write(entry, this.logOffset);
    await this.file.sync();
    this.sequence++;
  }
}

/** Write sectors at their offsets, one write per run of neighbouring sectors. */
async function writeRuns(file: BlockFile, offsets: readonly number[], sectors: ReadonlyMap<number, Buffer>): Promise<void> {
  let i = 0;
  while (i < offsets.length) {
    let j = i + 1;
    while (j < offsets.length && offsets[j] === offsets[j - 1]! + LOG_SECTOR) j++;
    await file.write(Buffer.concat(offsets.slice(i, j).map((o) => sectors.get(o)!)), offsets[i]!);
    i = j;
  }
}
