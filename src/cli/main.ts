/**
 * The sparsify command line: virt-sparsify's options, messages and exit codes, over the library.
 * What only one mode needs (in place, --analyze's report, --help, serve, --trim-vm) is imported
 * when that mode runs: a copy starts without loading the discard drivers and their compaction.
 */
import { basename } from 'node:path';
import { SparsifyError } from '../io/errors.js';
import { parseCommandLine, UsageError, longOptionList, shortOptionList, type CliOptions } from './options.js';
import { Output, MachineReadableError, humanSize } from './output.js';
import { checkTmpOption } from './tmp-option.js';
import { sparsifyCopy } from '../operations/copy.js';
import type { OperationEvents } from '../operations/events.js';
import type { InPlaceReport } from '../operations/in-place.js';
import { openImage } from '../formats/open.js';
import type { BlockFile } from '../io/file.js';
import { NbdFile } from '../io/nbd/nbd-file.js';
import type { KeyProvider } from '../layout/luks/keys.js';
import { keyStoreFromOptions } from './keys.js';
import { versionLine } from '../version.js';

/** What --machine-readable prints with no disk: only capabilities that really work. */
export const CAPABILITIES = ['virt-sparsify', 'linux-swap', 'zero', 'check-tmpdir', 'in-place', 'tmp-option', 'ntfs', 'btrfs', 'compact'];

function progName(): string {
  const b = basename(process.argv[1] ?? 'sparsify').replace(/\.(m?js|ts)$/, '');
  return b === 'main' || b === 'cli' ? 'sparsify' : b;
}


function checkInPlaceConflicts(o: CliOptions): void {
  const bad: string[] = [];
  if (o.checkTmpdirGiven && o.checkTmpdir !== 'warn') bad.push('--check-tmpdir');
  if (o.compress) bad.push('--compress');
  if (o.convert !== undefined) bad.push('--convert');
  if (o.outputOptions !== undefined) bad.push('-o');
  if (o.tmp !== undefined) bad.push('--tmp');
  if (bad.length) throw new SparsifyError(`you cannot use --in-place and ${bad[0]} options together`);
}

/** The lines after an in-place run: what was given back, and how (holes, a shorter image). */
function inPlaceSummary(out: Output, report: InPlaceReport): void {
  const freed = Math.max(0, report.allocatedBefore - report.allocatedAfter);
  const discarded = `${humanSize(report.bytesDiscarded)} of free space discarded`;
  if (report.nbd) {
    // Only block status is trusted: a server may answer TRIM with success and free nothing.
    const figures = `(block status: ${humanSize(report.allocatedBefore)} allocated before, ${humanSize(report.allocatedAfter)} after)`;
    out.info(freed > 0 ? `${discarded}; the server reports ${humanSize(freed)} fewer bytes allocated ${figures}` : `${discarded}; the server reports nothing given back ${figures}: it may ignore discards (qemu-nbd without --discard=unmap)`);
    return;
  }
  if (report.isBlockDevice) {
    // A block device's allocation is the storage's business: only what we did is known.
    out.info(report.released ? `${discarded} on the device` : `${discarded} (the device cannot discard)`);
  } else {
    out.info(
      `${discarded}; ${humanSize(freed)} given back to the host ` +
        `(the image used ${humanSize(report.allocatedBefore)}, now ${humanSize(report.allocatedAfter)})`,
    );
  }
  if (report.compacted) {
    const shorter = Math.max(0, report.endBefore - report.endAfter);
    if (report.isBlockDevice) {
      out.info(
        `compacted: ${humanSize(report.bytesMoved)} moved; the image now ends at byte ${report.endAfter} (it ended at ${report.endBefore}): ` +
          `the volume can be reduced to that plus headroom`,
      );
      out.machineLine(`image-end-offset: ${report.endAfter}`);
    } else {
      out.info(
        `compacted: ${humanSize(report.bytesMoved)} moved, the image is ${humanSize(shorter)} shorter ` +
          `(${report.endBefore} -> ${report.endAfter} bytes; ${humanSize(report.releasedByTruncation)} of it given back by truncation)`,
      );
    }
  } else if (report.compactableEnd !== undefined && report.isBlockDevice) {
    out.info(`--compact would move the kept data down so that the image ends at byte ${report.compactableEnd}; the volume could then be reduced to that plus headroom`);
  } else if (report.compactableEnd !== undefined && report.compactableEnd < report.endAfter) {
    const gain = report.endAfter - report.compactableEnd;
    out.info(`--compact would make the image ${humanSize(gain)} shorter (${report.endAfter} -> about ${report.compactableEnd} bytes)`);
  }
}

/** The operation events, printed the virt-sparsify way. */
function eventsFor(out: Output, signal: AbortSignal): OperationEvents {
  return {
    signal,
    onStatus: (t) => out.status(t),
    onWarning: (t) => out.warning(t),
    onInfo: (t) => out.info(t),
    onTrace: (t) => out.traceLine(t),
    onVerbose: (t) => out.verbose(t),
    onProgress: (p) => out.progress(p),
  };
}

async function runAnalyze(o: CliOptions, out: Output, keys: KeyProvider): Promise<number> {
  if (o.operands.length !== 1) throw new UsageError(`usage is: ${progName()} --analyze [--json] disk`);
  const [{ analyzeDisk }, { toJson, toText }] = await Promise.all([import('../analyze/analyze.js'), import('../analyze/report.js')]);
  let top: BlockFile | undefined;
  const image = await openImage(o.operands[0]!, { format: o.format, lock: 'read', warn: (w) => out.warning(w), onTopFile: (f) => (top = f) });
  try {
    const map = await analyzeDisk(image, { trace: (t) => out.traceLine(t), keys });
    process.stdout.write((o.json ? JSON.stringify(toJson(map), null, 2) : toText(map)) + '\n');
    if (top instanceof NbdFile) out.verbose(`${top.path}: read ${top.bytesRead} bytes of the export's ${top.size}`);
  } finally {
    await image.close();
  }
  return 0;
}

async function runCopy(o: CliOptions, out: Output, signal: AbortSignal, keys: KeyProvider): Promise<number> {
  if (o.operands.length !== 2) throw new UsageError(`usage is: ${progName()} [--options] indisk outdisk`);
  const [input, output] = o.operands as [string, string];
  if (o.tmp !== undefined) out.verbose(await checkTmpOption(o.tmp, input, o.format));
  const report = await sparsifyCopy({
    input,
    output,
    format: o.format,
    convert: o.convert,
    outputOptions: o.outputOptions,
    compress: o.compress,
    ignore: o.ignore,
    zero: o.zero,
    keys,
    ...eventsFor(out, signal),
  });
  out.endProgress();
  out.status('Sparsify operation completed with no errors.');
  out.info(
    `the output uses ${humanSize(report.outputAllocated)} on the host (the input used ${humanSize(report.inputAllocated)}); ` +
      `${humanSize(report.bytesWritten)} of data written`,
  );
  out.info('Before deleting the old disk, carefully check that the target disk boots and works correctly.');
  return 0;
}

async function runInPlace(o: CliOptions, out: Output, signal: AbortSignal, keys: KeyProvider): Promise<number> {
  if (o.operands.length !== 1) throw new UsageError(`usage is: ${progName()} [--options] --in-place disk`);
  const { sparsifyInPlace } = await import('../operations/in-place.js');
  const report = await sparsifyInPlace({
    path: o.operands[0]!,
    format: o.format,
    ignore: o.ignore,
    zero: o.zero,
    keys,
    compact: o.compact,
    ...eventsFor(out, signal),
  });
  out.endProgress();
  out.status('Sparsify in-place operation completed with no errors');
  inPlaceSummary(out, report);
  return 0;
}

export async function main(argv: readonly string[]): Promise<number> {
  // `sparsify serve ...`: the service (API, UI, jobs), loaded only when asked for.
  if (argv[0] === 'serve') return (await import('../service/cli.js')).serveMain(argv.slice(1));
  const prog = progName();
  let o: CliOptions;
  try {
    o = parseCommandLine(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${prog}: ${e.message}\nTry '${prog} --help' for more information.\n`);
      return 1;
    }
    throw e;
  }
  if (o.help) {
    process.stdout.write((await import('./help.js')).helpText(prog));
    return 0;
  }
  if (o.version) {
    process.stdout.write(versionLine(prog) + '\n');
    return 0;
  }
  if (o.shortOptions) {
    process.stdout.write(shortOptionList().join('\n') + '\n');
    return 0;
  }
  if (o.longOptions) {
    process.stdout.write(longOptionList().join('\n') + '\n');
    return 0;
  }

  let out: Output;
  try {
    out = new Output({ prog, quiet: o.quiet, verbose: o.verbose, trace: o.trace, colors: o.colors, wrap: o.wrap, machineReadable: o.machineReadable });
  } catch (e) {
    if (e instanceof MachineReadableError) {
      process.stderr.write(`${prog}: error: ${e.message}\n`);
      return 1;
    }
    throw e;
  }

  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let keys: KeyProvider | undefined;
  try {
    if (o.machineReadable !== undefined && o.operands.length === 0 && !o.analyze) {
      for (const c of CAPABILITIES) out.machineLine(c);
      return 0;
    }
    if (o.trimVm !== undefined) {
      if (o.operands.length || o.inPlace || o.analyze) throw new UsageError('--trim-vm takes no disk, and neither --in-place nor --analyze');
      return await (await import('./trim-vm.js')).runTrimVm(o.trimVm, o.connect ?? 'qemu:///system', out);
    }
    if (o.connect !== undefined) throw new UsageError('--connect is only for --trim-vm');
    if (o.inPlace) checkInPlaceConflicts(o);
    else if (o.compact) throw new SparsifyError('--compact is only for --in-place mode (a copy is always written compact)');
    keys = await keyStoreFromOptions(o);
    if (o.analyze) return await runAnalyze(o, out, keys);
    return o.inPlace ? await runInPlace(o, out, controller.signal, keys) : await runCopy(o, out, controller.signal, keys);
  } catch (e) {
    if (e instanceof UsageError) {
      out.error(e.message);
      return 1;
    }
    if (e instanceof SparsifyError) {
      out.error(e.message);
      return e.exitCode;
    }
    const err = e as NodeJS.ErrnoException;
    out.error(err.code ? `${err.message}` : `internal error: ${err.message ?? String(e)}`);
    if (o.verbose && err.stack) process.stderr.write(err.stack + '\n');
    return 1;
  } finally {
    keys?.dispose();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    out.close();
  }
}
