/**
 * Linux swap (v1 "SWAPSPACE2", and the obsolete v0 "SWAP-SPACE").
 *
 * The signature sits in the last 10 bytes of the first page; the page size is whatever the
 * creating kernel used, so every size libblkid knows (4 KiB..64 KiB) is tried. The first page
 * (boot bits, header with version/last page/UUID/label, signature) is kept exactly; the rest of
 * the swap area holds nothing that survives a reboot, so it is free, unless the kernel wrote a
 * hibernation image there: the suspend signatures replace the swap magic at the same place
 * (and TuxOnIce writes its own magic at offset 0).
 */
import { Extents } from '../io/extents.js';
import type { Volume } from '../layout/volume.js';
import type { FsAnalysis, FsReader } from './types.js';

const PAGE_SIZES = [4096, 8192, 16384, 32768, 65536];
const SWAP_MAGICS: Record<string, number> = { SWAPSPACE2: 1, 'SWAP-SPACE': 0 };
/** Hibernation signatures that take the swap magic's place (libblkid's swsuspend prober). */
const SUSPEND_MAGICS = ['S1SUSPEND', 'S2SUSPEND', 'ULSUSPEND', 'LINHIB0001'];
const TUXONICE_MAGIC = Buffer.from('edc302e99856e50c', 'hex');
/** v1 header fields, after 1024 bytes of boot bits. */
const HDR = 1024;

interface Signature {
  pageSize: number;
  kind: 'swap' | 'suspend';
  magic: string;
}

async function findSignature(volume: Volume): Promise<Signature | undefined> {
  for (const pageSize of PAGE_SIZES) {
    if (volume.size < pageSize) break;
    const tail = (await volume.readAt(pageSize - 10, 10)).toString('latin1');
    if (tail in SWAP_MAGICS) return { pageSize, kind: 'swap', magic: tail };
    const susp = SUSPEND_MAGICS.find((m) => tail.startsWith(m));
    if (susp) return { pageSize, kind: 'suspend', magic: susp };
  }
  return undefined;
}

function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.subarray(0, nul < 0 ? buf.length : nul).toString('utf8');
}

function formatUuid(b: Buffer): string | undefined {
  if (b.every((x) => x === 0)) return undefined;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const swapReader: FsReader = {
  name: 'swap',

  async probe(volume: Volume): Promise<boolean> {
    try {
      if (volume.size < 4096) return false;
      if ((await volume.readAt(0, 8)).equals(TUXONICE_MAGIC)) return true;
      return (await findSignature(volume)) !== undefined;
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume): Promise<FsAnalysis> {
    const sig = await findSignature(volume);
    const tuxOnIce = volume.size >= 8 && (await volume.readAt(0, 8)).equals(TUXONICE_MAGIC);
    const pageSize = sig?.pageSize ?? 4096;
    const result: FsAnalysis = {
      type: 'swap',
      blockSize: pageSize,
      size: volume.size,
      usedBytes: volume.size,
      freeBytes: 0,
      free: new Extents(),
      trusted: false,
      warnings: [],
      details: { pageSize },
    };
    const keep = (why: string): FsAnalysis => {
      result.warnings.push(why);
      return result;
    };

    if (tuxOnIce || sig?.kind === 'suspend') {
      result.details!.signature = tuxOnIce ? 'TuxOnIce' : sig!.magic;
      return keep(`swap holds a hibernation image (${result.details!.signature}); kept whole`);
    }
    if (!sig) return keep('no swap signature found; kept whole');
    const version = SWAP_MAGICS[sig.magic]!;
    result.details!.version = version;

    let lastPage: number;
    if (version === 1) {
      // The header is written in the creating machine's byte order; version == 1 tells which.
      const hdr = await volume.readAt(HDR, 44);
      let little: boolean;
      if (hdr.readUInt32LE(0) === 1) little = true;
      else if (hdr.readUInt32BE(0) === 1) little = false;
      else return keep(`swap header at ${HDR} has unknown version ${hdr.readUInt32LE(0)}; kept whole`);
      lastPage = little ? hdr.readUInt32LE(4) : hdr.readUInt32BE(4);
      result.uuid = formatUuid(hdr.subarray(12, 28));
      const label = cString(hdr.subarray(28, 44));
      if (label) result.label = label;
      if (!little) result.details!.endianness = 'big';
    } else {
      // v0 has no header: the first page is a bitmap of usable pages, the area is the whole volume.
      lastPage = Math.floor(volume.size / pageSize) - 1;
    }
    if (lastPage < 1) return keep(`swap header says its last page is ${lastPage}; kept whole`);

    // The swap area is pages 0..lastPage. Anything past it (a partition larger than the swap) is
    // not swap's to give away.
    const areaEnd = Math.min(volume.size, (lastPage + 1) * pageSize);
    if ((lastPage + 1) * pageSize > volume.size) {
      result.warnings.push(`swap header claims ${lastPage + 1} pages but the volume holds only ${Math.floor(volume.size / pageSize)}`);
    }
    result.free = areaEnd > pageSize ? Extents.of(pageSize, areaEnd) : new Extents();
    result.freeBytes = result.free.total();
    result.usedBytes = volume.size - result.freeBytes;
    result.trusted = true;
    return result;
  },
};
