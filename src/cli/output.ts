/**
 * Everything the CLI prints, in virt-sparsify's formats: `[   0.0] status` lines and
 * `NAME: info`/`NAME: warning: ...` on stdout, `NAME: error: ...` on stderr, and progress as a bar
 * on a terminal or `N/M` lines on the machine-readable channel.
 */
import { openSync, writeSync, closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import type CliProgress from 'cli-progress';

/** cli-progress (CommonJS) is loaded, synchronously, the first time a bar is drawn: most runs draw none (-q, not a terminal). */
const loadCliProgress = (): typeof CliProgress => createRequire(import.meta.url)('cli-progress') as typeof CliProgress;
import type { Progress } from '../execute/progress.js';

export interface OutputOptions {
  prog: string;
  quiet: boolean;
  verbose: boolean;
  trace: boolean;
  colors: boolean;
  wrap: boolean;
  /** undefined when off; '' or a FMT (file:NAME, fd:N, stream:stdout, stream:stderr). */
  machineReadable?: string;
}

export class MachineReadableError extends Error {}

/** Where machine-readable output goes. */
function openMachineChannel(fmt: string): { write: (s: string) => void; close: () => void } {
  const toFd = (fd: number, owned: boolean) => ({
    write: (s: string) => void writeSync(fd, s),
    close: () => {
      if (owned) closeSync(fd);
    },
  });
  if (fmt === '' || fmt === 'stream:stdout') return toFd(1, false);
  if (fmt === 'stream:stderr') return toFd(2, false);
  if (fmt.startsWith('file:') && fmt.length > 5) return toFd(openSync(fmt.slice(5), 'w'), true);
  if (fmt.startsWith('fd:') && /^\d+$/.test(fmt.slice(3))) return toFd(Number(fmt.slice(3)), false);
  throw new MachineReadableError(`invalid output for --machine-readable: ${fmt}`);
}

function wrapText(text: string, width: number, indent: string): string {
  const words = text.split(' ');
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = indent + w;
    } else line = line ? `${line} ${w}` : w;
  }
  lines.push(line);
  return lines.join('\n');
}

export class Output {
  private readonly t0 = process.hrtime.bigint();
  private readonly machine?: { write: (s: string) => void; close: () => void };
  private bar?: CliProgress.SingleBar;
  private lastMachinePercent = -1;

  constructor(private readonly o: OutputOptions) {
    if (o.machineReadable !== undefined) this.machine = openMachineChannel(o.machineReadable);
  }

  get machineReadable(): boolean {
    return this.machine !== undefined;
  }

  private elapsed(): string {
    const s = Number(process.hrtime.bigint() - this.t0) / 1e9;
    return s.toFixed(1).padStart(6);
  }

  private color(code: string, s: string): string {
    return this.o.colors ? `\x1b[${code}m${s}\x1b[0m` : s;
  }

  private fmt(text: string): string {
    if (!this.o.wrap) return text;
    const width = process.stdout.columns && process.stdout.columns > 20 ? process.stdout.columns : 80;
    return wrapText(text, width, '');
  }

  private out(line: string): void {
    this.clearBar();
    process.stdout.write(line + '\n');
  }

  /** `[   1.2] Copy to destination and make sparse` */
  status(text: string): void {
    if (this.o.quiet) return;
    this.out(this.color('1;34', `[${this.elapsed()}] ${text}`));
  }

  info(text: string): void {
    if (this.o.quiet) return;
    this.out(this.fmt(`${this.o.prog}: ${text}`));
  }

  /** Warnings print even with -q: they are about the user's data. */
  warning(text: string): void {
    this.out(this.color('1;33', this.fmt(`${this.o.prog}: warning: ${text}`)));
  }

  error(text: string): void {
    this.clearBar();
    process.stderr.write(this.color('1;31', this.fmt(`${this.o.prog}: error: ${text}`)) + '\n');
  }

  verbose(text: string): void {
    if (this.o.verbose) process.stderr.write(`${this.o.prog}: ${text}\n`);
  }

  traceLine(text: string): void {
    if (this.o.trace) process.stderr.write(`${this.o.prog}: trace: ${text}\n`);
  }

  /** Raw text to the machine-readable channel (capabilities). */
  machineLine(text: string): void {
    this.machine?.write(text + '\n');
  }

  progress(p: Progress): void {
    if (this.machine) {
      // A line per whole percent (and the last one), enough for a caller to show progress.
      const pct = p.total === 0 ? 100 : Math.floor((p.done * 100) / p.total);
      if (pct !== this.lastMachinePercent || p.done === p.total) {
        this.lastMachinePercent = pct;
        this.machine.write(`${p.done}/${p.total}\n`);
      }
      return;
    }
    if (this.o.quiet || !process.stdout.isTTY) return;
    if (!this.bar) {
      const cliProgress = loadCliProgress();
      this.bar = new cliProgress.SingleBar(
        {
          format: ' {bar} {percentage}% | {doneH} / {totalH} | {rate} | ETA {eta_formatted}',
          hideCursor: true,
          clearOnComplete: true,
          stream: process.stdout,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(Math.max(1, p.total), 0, { doneH: '', totalH: '', rate: '' });
    }
    const secs = Number(process.hrtime.bigint() - this.t0) / 1e9;
    this.bar.update(p.done, { doneH: humanSize(p.done), totalH: humanSize(p.total), rate: `${humanSize(p.done / Math.max(secs, 0.001))}/s` });
  }

  /** Stop any progress display. */
  endProgress(): void {
    this.clearBar();
  }

  private clearBar(): void {
    if (this.bar) {
      this.bar.stop();
      this.bar = undefined;
    }
  }

  close(): void {
    this.clearBar();
    this.machine?.close();
  }
}

/** 1536 -> "1.5K", as libguestfs tools print sizes. */
export function humanSize(n: number): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(n)}` : `${n.toFixed(1)}${units[i]}`;
}
