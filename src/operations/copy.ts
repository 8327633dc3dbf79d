/**
 * Copy mode end to end: open the source (locked against writers), analyze, plan, and write a new
 * sparse image under a temporary name in the output's folder, renamed into place only when
 * complete and flushed. The source is never written.
 */
import { stat, statfs, rename, unlink, open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SparsifyError } from '../io/errors.js';
import { openImage } from '../formats/open.js';
import { findDriver, formatDrivers } from '../formats/registry.js';
import type { ImageWriter } from '../formats/types.js';
import { analyzeDisk } from '../analyze/analyze.js';
import { allInfo, type DiskMap } from '../analyze/diskmap.js';
import { makePlan, type Plan } from '../plan/plan.js';
import { operationWarnings } from '../plan/warnings.js';
import { copyImage } from '../execute/copy.js';
import { humanBytes } from '../analyze/report.js';
import { overlayClusters } from '../plan/overlay.js';
import { snapshotAdvice } from '../analyze/report.js';
import { prepareOverlay } from './keep-backing.js';
import type { OperationEvents } from './events.js';
import type { KeyProvider } from '../layout/luks/keys.js';
import { parseOutputOptions } from './output-options.js';
import { availableParallelism } from 'node:os';
import { isNbdUri, parseNbdUri } from '../io/nbd/uri.js';
import { NbdRawWriter } from '../execute/nbd-writer.js';

export interface CopyRequest extends OperationEvents {
  input: string;
  output: string;
  /** Input format; detected when absent. */
  format?: string;
  /** Output format; the input's when absent. */
  convert?: string;
  /** -o text, e.g. "cluster_size=65536,compat=1.1". */
  outputOptions?: string;
  compress?: boolean;
  ignore?: string[];
  zero?: string[];
  /** Pass every byte through memory: never share blocks with the input (reflink) nor copy in the kernel. */
  noTransfer?: boolean;
  /**
   * Keys for LUKS volumes (KeyStore from the CLI's --key options or `loadKeysFile`): a volume
   * with a key is sparsified inside, one without is kept whole. Not disposed here.
   */
  keys?: KeyProvider;
  /**
   * Keep the backing chain (for replacing the top layer of a chain with its copy): the output is a
   * qcow2 overlay on the same backing file and format, holding the input's own clusters minus the
   * wholly free ones (keep-backing.ts). Without it the chain is flattened, as virt-sparsify does.
   */
  keepBacking?: boolean;
}

export interface CopyReport {
  map: DiskMap;
  plan: Plan;
  outputFormat: string;
  bytesRead: number;
  bytesWritten: number;
  inputAllocated: number;
  outputAllocated: number;
  /** With keepBacking: the backing file the output records. */
  backingFile?: string;
}

/**
 * Say up front when the output's folder cannot hold the copy: the most the copy writes is the
 * kept data, known from the plan, so a full disk is named with its figures, not a bare ENOSPC
 * halfway. A copy shared by reflinks takes no new space and is not refused.
 */
async function checkSpace(dir: string, bytes: number, shared: boolean): Promise<void> {
  if (shared) return;
  const st = await statfs(dir);
  const free = st.bavail * st.bsize;
  if (free < bytes) {
    throw new SparsifyError(`not enough space in ${dir} for the output: the copy writes up to ${bytes} bytes (${humanBytes(bytes)}) of data and ${free} bytes (${humanBytes(free)}) are free`);
  }
}

async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    const [sa, sb] = await Promise.all([stat(a), stat(b)]);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } catch {
    // Some filesystems cannot fsync a directory; the rename is still atomic.
  } finally {
    await h.close();
  }
}

export async function sparsifyCopy(req: CopyRequest): Promise<CopyReport> {
  // An NBD output receives the guest's view (raw); it is written in place, never renamed.
  const toNbd = isNbdUri(req.output);
  if (toNbd) {
    const out = parseNbdUri(req.output).display;
    if (req.input === req.output) throw new SparsifyError('you cannot use the same disk image for input and output');
    if (req.convert !== undefined && req.convert !== 'raw') throw new SparsifyError(`${out}: writing a ${req.convert} image into an NBD export is not supported yet; the export receives the guest's view (leave out --convert)`);
    if (req.keepBacking || req.compress) throw new SparsifyError(`${out}: ${req.keepBacking ? '--keep-backing' : '--compress'} cannot be used with an NBD export as the output`);
  }
  if (await sameFile(req.input, req.output)) throw new SparsifyError('you cannot use the same disk image for input and output');
  const outStat = toNbd ? undefined : await stat(req.output).catch(() => undefined);
  if (outStat && !outStat.isFile()) throw new SparsifyError(`${req.output}: output must be a regular file (writing to a ${outStat.isDirectory() ? 'directory' : 'device'} is not supported yet)`);

  req.onStatus?.('Examine source disk');
  const image = await openImage(req.input, { format: req.format, lock: 'read', warn: req.onWarning });
  try {
    for (const layer of image.layers().slice(1)) {
      if (await sameFile(layer.path, req.output)) throw new SparsifyError(`you cannot write the output over ${req.output}: it is a backing file of ${req.input}`);
    }
    const outputFormat = toNbd ? 'raw' : (req.convert ?? image.format);
    const driver = findDriver(outputFormat);
    if (req.compress && outputFormat === 'raw') {
      throw new SparsifyError('--compress cannot be used for raw output.  Remove this option or use --convert qcow2.');
    }
    if (!driver?.createWriter) {
      const known = formatDrivers().filter((d) => d.createWriter).map((d) => d.name).join(', ');
      throw new SparsifyError(`output format '${outputFormat}' is not supported yet (supported: ${known})`);
    }
    const overlay = req.keepBacking ? await prepareOverlay(image, req.output, req.convert, parseOutputOptions(req.outputOptions)) : undefined;
    const options = overlay?.options ?? parseOutputOptions(req.outputOptions);

    req.onVerbose?.(`${req.input}: ${image.format}, virtual size ${image.virtualSize} bytes, ${image.layers().length} layer(s)`);
    const map = await analyzeDisk(image, { trace: req.onTrace, keys: req.keys });
    for (const i of allInfo(map)) req.onInfo?.(i);
    const snapshots = image.layers()[0]?.details?.snapshots;
    if (!overlay && snapshots) req.onInfo?.(`${snapshots} internal snapshot(s) of ${req.input} are not copied, as with virt-sparsify`);
    const advice = overlay ? snapshotAdvice(map) : undefined;
    if (advice) req.onInfo?.(advice);
    const plan = makePlan(map, { ignore: req.ignore, zero: req.zero });
    for (const w of operationWarnings(map, plan, 'copy')) req.onWarning?.(w);
    req.onVerbose?.(`plan: discard ${plan.discard.total()} bytes in ${plan.discard.count} ranges, keep ${plan.keep.total()} bytes`);
    for (const u of plan.unmatched) req.onWarning?.(`${u}: no such filesystem or volume on the disk; ignored`);
    for (const s of plan.steps) {
      if (s.action === 'fill-free') req.onStatus?.(`Fill free space in ${s.device} with zero`);
      else if (s.action === 'zero-device') req.onStatus?.(`Zeroing ${s.device}`);
      else req.onStatus?.(`Ignoring ${s.device}`);
    }

    const temp = join(dirname(req.output), `.${basename(req.output)}.sparsify-${process.pid}.tmp`);
    let writer: ImageWriter | undefined;
    let nbdWriter: NbdRawWriter | undefined;
    try {
      if (toNbd) writer = nbdWriter = await NbdRawWriter.open(req.output, image.virtualSize, (m) => req.onWarning?.(m));
      else writer = await driver.createWriter(temp, image.virtualSize, options, {
        compress: req.compress ?? false,
        // Compression runs on libuv's thread pool, which bin/sparsify.js sizes to the cores.
        threads: Math.max(1, availableParallelism()),
        finalPath: req.output,
        ...(overlay ? { backing: overlay.backing } : {}),
      });
      req.onStatus?.('Copy to destination and make sparse');
      if (overlay) req.onVerbose?.(`output: a qcow2 overlay on ${overlay.backing.file}, holding the input's own clusters minus the wholly free ones`);
      const r = await copyImage(image, plan, writer, {
        ...(toNbd ? {} : { checkSpace: (bytes: number, shared: boolean) => checkSpace(dirname(req.output), bytes, shared) }),
        onProgress: req.onProgress,
        signal: req.signal,
        data: map.data,
        noTransfer: req.noTransfer,
        ...(overlay ? { overlayClusters: overlayClusters(overlay.own, plan, writer.allocationUnit ?? 1) } : {}),
      });
      await writer.finish();
      writer = undefined;
      req.onVerbose?.(`read ${r.bytesRead} bytes of data, wrote ${r.bytesWritten} bytes (${outputFormat}; ${r.bytesCloned} shared with the input by reflink, ${r.bytesCopied} copied by the kernel)`);
      let outputAllocated: number;
      if (nbdWriter) {
        req.onVerbose?.(`${nbdWriter.path}: the rest zeroed with ${nbdWriter.zeroRequests} WRITE_ZEROES calls, then FLUSH`);
        outputAllocated = nbdWriter.allocatedAfter;
      } else {
        await rename(temp, req.output);
        await syncDir(dirname(req.output));
        outputAllocated = (await stat(req.output)).blocks * 512;
      }
      return {
        map,
        plan,
        outputFormat,
        bytesRead: r.bytesRead,
        bytesWritten: r.bytesWritten,
        inputAllocated: overlay ? (map.layers[0]?.allocatedBytes ?? 0) : map.allocatedBytes,
        outputAllocated,
        ...(overlay ? { backingFile: overlay.backing.file } : {}),
      };
    } catch (e) {
      await writer?.abort();
      if (toNbd) {
        if (e instanceof SparsifyError) throw new SparsifyError(`${e.message} (the copy into ${parseNbdUri(req.output).display} did not complete)`, e.exitCode);
        throw e;
      }
      await unlink(temp).catch(() => undefined);
      throw e;
    }
  } finally {
    await image.close();
  }
}
