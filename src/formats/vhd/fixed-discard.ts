/**
 * In-place discard for fixed VHD (qemu: vpc, subformat fixed): the guest's bytes lie as they are
 * from offset 0, followed by the 512-byte footer, the only copy. So it is a raw image whose last
 * sector must never be touched: the plan is clipped to the data area before the raw file (or
 * block device) discarder aligns it inward, and holes are punched like a raw file's.
 */
import { stat } from 'node:fs/promises';
import type { BlockFile } from '../../io/file.js';
import { CorruptError } from '../../io/errors.js';
import type { Extents } from '../../io/extents.js';
import { BlockDeviceDiscarder, RawFileDiscarder } from '../raw-discard.js';
import { FOOTER_SIZE, TYPE_FIXED, isFooter, parseFooter } from '../common/vhd-footer.js';
import type { DiscardBackend, DiscardContext, DiscardResult } from '../discard-types.js';

export class FixedVhdDiscarder implements DiscardBackend {
  readonly writeZeros?: (ranges: Extents) => Promise<void>;

  private constructor(
    private readonly inner: DiscardBackend,
    /** Where the footer starts: nothing at or past it is discarded or written. */
    private readonly dataEnd: number,
  ) {
    const zeros = inner.writeZeros?.bind(inner);
    if (zeros) this.writeZeros = (ranges) => zeros(ranges.clip(0, this.dataEnd));
  }

  static async open(file: BlockFile): Promise<FixedVhdDiscarder> {
    const at = file.size - FOOTER_SIZE;
    const tail = Buffer.alloc(FOOTER_SIZE);
    if (at >= 0) await file.readExact(tail, at, 'vpc footer');
    // A fixed disk has no copy at 0: its footer must be the last sector, or its end is unknown.
    if (at < 0 || !isFooter(tail) || parseFooter(tail, file.path, at).diskType !== TYPE_FIXED) {
      throw new CorruptError(`vpc: ${file.path}: a fixed VHD must end with its footer; none at ${at < 0 ? 0 : `0x${at.toString(16)}`}`);
    }
    const inner = file.isBlockDevice ? await BlockDeviceDiscarder.open(file, (await stat(file.path)).rdev) : await RawFileDiscarder.open(file);
    return new FixedVhdDiscarder(inner, at);
  }

  get description(): string {
    return `vpc fixed: ${this.inner.description} before the footer at ${this.dataEnd}`;
  }

  align(ranges: Extents): Extents {
    return this.inner.align(ranges.clip(0, this.dataEnd));
  }

  canRelease(): Promise<boolean> {
    return this.inner.canRelease();
  }

  discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    return this.inner.discard(ranges.clip(0, this.dataEnd), ctx);
  }
}
