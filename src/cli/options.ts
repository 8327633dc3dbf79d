/** virt-sparsify's options (plus sparsify's own --analyze and --json), parsed into one typed object. */
import { getoptLongOnly, GetoptError, type OptionSpec } from './getopt.js';

export const OPTION_SPECS: readonly OptionSpec[] = [
  { long: 'analyze', arg: 'none' },
  { long: 'check-tmpdir', arg: 'required' },
  { long: 'colors', aliases: ['colours'], arg: 'none' },
  { long: 'compact', arg: 'none' },
  { long: 'compress', arg: 'none' },
  { long: 'convert', arg: 'required' },
  { long: 'debug-gc', arg: 'none' },
  { long: 'echo-keys', arg: 'none' },
  { long: 'format', arg: 'required' },
  { long: 'help', arg: 'none' },
  { long: 'ignore', arg: 'required' },
  { long: 'in-place', aliases: ['inplace'], arg: 'none' },
  { long: 'json', arg: 'none' },
  { long: 'key', arg: 'required' },
  { long: 'keys-from-stdin', arg: 'none' },
  { long: 'long-options', arg: 'none' },
  { long: 'machine-readable', arg: 'optional' },
  { long: 'o', short: 'o', arg: 'required' },
  { long: 'quiet', short: 'q', arg: 'none' },
  { long: 'short-options', arg: 'none' },
  { long: 'tmp', arg: 'required' },
  { long: 'verbose', short: 'v', arg: 'none' },
  { long: 'version', short: 'V', arg: 'none' },
  { long: 'wrap', arg: 'none' },
  { long: 'x', short: 'x', arg: 'none' },
  { long: 'zero', arg: 'required' },
];

export type CheckTmpdir = 'ignore' | 'continue' | 'warn' | 'fail';

export interface CliOptions {
  analyze: boolean;
  json: boolean;
  checkTmpdir: CheckTmpdir;
  /** True when --check-tmpdir was given at all (in-place rejects a non-default one). */
  checkTmpdirGiven: boolean;
  colors: boolean;
  /** In place: move the kept data down and shorten the image. */
  compact: boolean;
  compress: boolean;
  convert?: string;
  debugGc: boolean;
  echoKeys: boolean;
  format?: string;
  help: boolean;
  ignore: string[];
  inPlace: boolean;
  keys: string[];
  keysFromStdin: boolean;
  longOptions: boolean;
  /** undefined: off; '' : on, to stdout; otherwise the FMT given. */
  machineReadable?: string;
  outputOptions?: string;
  quiet: boolean;
  shortOptions: boolean;
  tmp?: string;
  verbose: boolean;
  version: boolean;
  wrap: boolean;
  trace: boolean;
  zero: string[];
  operands: string[];
}

export class UsageError extends Error {}

const CHECK_TMPDIR: Record<string, CheckTmpdir> = {
  ignore: 'ignore', i: 'ignore',
  continue: 'continue', cont: 'continue', c: 'continue',
  warn: 'warn', warning: 'warn', w: 'warn',
  fail: 'fail', f: 'fail', error: 'fail',
};

export function parseCommandLine(argv: readonly string[]): CliOptions {
  let parsed;
  try {
    parsed = getoptLongOnly(argv, OPTION_SPECS);
  } catch (e) {
    if (e instanceof GetoptError) throw new UsageError(e.message);
    throw e;
  }
  const o: CliOptions = {
    analyze: false, json: false, checkTmpdir: 'warn', checkTmpdirGiven: false, colors: false, compact: false, compress: false,
    debugGc: false, echoKeys: false, help: false, ignore: [], inPlace: false, keys: [], keysFromStdin: false,
    longOptions: false, quiet: false, shortOptions: false, verbose: false, version: false, wrap: false,
    trace: false, zero: [], operands: parsed.operands,
  };
  for (const { name, value } of parsed.options) {
    switch (name) {
      case 'analyze': o.analyze = true; break;
      case 'json': o.json = true; break;
      case 'check-tmpdir': {
        const mode = CHECK_TMPDIR[value!];
        if (!mode) throw new UsageError(`unknown --check-tmpdir option: ${value}`);
        o.checkTmpdir = mode;
        o.checkTmpdirGiven = true;
        break;
      }
      case 'colors': o.colors = true; break;
      case 'compact': o.compact = true; break;
      case 'compress': o.compress = true; break;
      case 'convert': o.convert = value; break;
      case 'debug-gc': o.debugGc = true; break;
      case 'echo-keys': o.echoKeys = true; break;
      case 'format': o.format = value; break;
      case 'help': o.help = true; break;
      case 'ignore': o.ignore.push(value!); break;
      case 'in-place': o.inPlace = true; break;
      case 'key': o.keys.push(value!); break;
      case 'keys-from-stdin': o.keysFromStdin = true; break;
      case 'long-options': o.longOptions = true; break;
      case 'machine-readable': o.machineReadable = value ?? ''; break;
      case 'o': o.outputOptions = value; break;
      case 'quiet': o.quiet = true; break;
      case 'short-options': o.shortOptions = true; break;
      case 'tmp': o.tmp = value; break;
      case 'verbose': o.verbose = true; break;
      case 'version': o.version = true; break;
      case 'wrap': o.wrap = true; break;
      case 'x': o.trace = true; break;
      case 'zero': o.zero.push(value!); break;
    }
  }
  return o;
}

/** The long options, each with its dashes, as --long-options prints them. */
export function longOptionList(): string[] {
  return OPTION_SPECS.filter((s) => s.long.length > 1).flatMap((s) => [s.long, ...(s.aliases ?? [])]).map((n) => `--${n}`).sort();
}

export function shortOptionList(): string[] {
  return OPTION_SPECS.filter((s) => s.short).map((s) => `-${s.short}`).sort();
}
