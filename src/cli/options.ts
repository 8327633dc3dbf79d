/**
 * virt-sparsify's options (plus sparsify's own --analyze, --json and --compact), parsed into one
 * typed object. The table also documents each option: `--help`, the manual page and the shell
 * completion are all generated from it, so none of them can drift from what the parser accepts.
 */
import { getoptLongOnly, GetoptError, type OptionSpec } from './getopt.js';

/** What the shell offers after an option that takes an argument. */
export type ArgCompletion = 'files' | 'dirs' | 'formats' | 'output-formats' | 'devices' | readonly string[];

export interface CliOptionSpec extends OptionSpec {
  /**
   * The option as --help and the manual show it: `-q, --quiet`, `--convert FMT`. Several when it
   * has several forms worth showing apart (`--key ID:key:KEY` and `--key ID:file:FILE`). Absent:
   * accepted for compatibility, and named only in the manual's compatibility section.
   */
  usage?: readonly string[];
  /** One line or two for --help (wrapped to the terminal's 80 columns). */
  summary?: string;
  /** The manual's paragraphs for a person: what it does, when to use it, what it refuses. */
  manual?: readonly string[];
  complete?: ArgCompletion;
}

export const OPTION_SPECS: readonly CliOptionSpec[] = [
  {
    long: 'analyze', arg: 'none', usage: ['--analyze'],
    summary: 'Print the disk map (tables, volumes, filesystems, free space); write nothing',
    manual: ['Print the disk map instead of sparsifying: the partition tables, volume groups, encrypted volumes and filesystems found, each with its size, used and free bytes, and what sparsify would give back. The image is opened read-only and nothing is written. A sparsify extension.'],
  },
  {
    long: 'json', arg: 'none', usage: ['--json'],
    summary: 'With --analyze: print it as JSON',
    manual: ['With --analyze, print the disk map as one JSON document (for scripts). A sparsify extension.'],
  },
  {
    long: 'check-tmpdir', arg: 'required', usage: ['--check-tmpdir MODE'], complete: ['ignore', 'continue', 'warn', 'fail'],
    summary: 'ignore|continue|warn|fail (copy mode needs no temporary space: always passes)',
    manual: ['Accepted as virt-sparsify accepts it (MODE is ignore, continue, warn or fail). virt-sparsify checks that its temporary directory can hold the whole disk; sparsify writes no temporary files, so the check always passes. Not allowed with --in-place unless MODE is warn.'],
  },
  {
    long: 'colors', aliases: ['colours'], arg: 'none', usage: ['--colors, --colours'],
    summary: 'Colour the messages',
    manual: ['Colour the status, warning and error messages (ANSI escapes), even when the output is not a terminal.'],
  },
  {
    long: 'compact', arg: 'none', usage: ['--compact'],
    summary: 'With --in-place: also move the kept data down into the freed space and shorten the image (qcow2, vdi, vmdk, vpc, vhdx), so its length shrinks too; works where holes cannot be punched. On a block device the new image end is printed, to reduce the volume to',
    manual: [
      'With --in-place, after giving the free space back, move the data that is kept down into the freed space and shorten the image, so its length shrinks too (qcow2, vdi, monolithicSparse vmdk, vpc and vhdx; a raw image has nothing to compact). It needs no temporary space and works on storage that cannot punch holes (NFS before 4.2, FUSE filesystems), where plain --in-place exits with status 3.',
      'Every move is copy-on-write: a power cut at any moment leaves the old or the new copy referenced, at worst a leaked cluster that the next run gives back. On a block device the image cannot be truncated: the new end is printed (and given as image-end-offset on the --machine-readable channel), so the volume can be reduced to it plus headroom. A sparsify extension.',
    ],
  },
  {
    long: 'compress', arg: 'none', usage: ['--compress'],
    summary: 'Compress the output (qcow2, streamOptimized vmdk)',
    manual: ['Compress the output image: qcow2 clusters with zlib (or zstd with -o compression_type=zstd), or a streamOptimized vmdk. Copy mode only.'],
  },
  {
    long: 'connect', arg: 'required', usage: ['--connect URI'],
    summary: 'With --trim-vm: the libvirt connection (default qemu:///system)',
    manual: ['With --trim-vm, the libvirt connection that runs the VM (default qemu:///system). A sparsify extension.'],
  },
  {
    long: 'convert', arg: 'required', usage: ['--convert FMT'], complete: 'output-formats',
    summary: "Output format (default: the input's)",
    manual: ["Write the copy in format FMT: raw, qcow2, vdi, vmdk, vpc or vhdx (qemu-img's names). The default is the input's format. Copy mode only."],
  },
  { long: 'debug-gc', arg: 'none' },
  {
    long: 'echo-keys', arg: 'none', usage: ['--echo-keys'],
    summary: 'Echo the keys typed at the prompt',
    manual: ['When keys are read from a terminal (--keys-from-stdin on a terminal), show what is typed. The default is not to echo it.'],
  },
  {
    long: 'format', arg: 'required', usage: ['--format FMT'], complete: 'formats',
    summary: "Input format (default: detected; give 'raw' for untrusted raw images)",
    manual: ["The input's format: raw, qcow2, vdi, vmdk, vpc or vhdx. By default it is detected from the image's magic bytes. Give --format raw for a raw image whose contents you do not trust: a guest could otherwise write a header that makes its disk look like another format with a backing file elsewhere on the host."],
  },
  {
    long: 'help', arg: 'none', usage: ['--help'],
    summary: 'This help',
    manual: ['Print a summary of the options and exit.'],
  },
  {
    long: 'ignore', arg: 'required', usage: ['--ignore FS|VG'], complete: 'devices',
    summary: 'Do not reclaim the free space of this filesystem or volume group',
    manual: ["Leave the free space of this filesystem (a device name as libguestfs names it: /dev/sda1, /dev/VG/LV, /dev/mapper/luks-UUID) or of this LVM volume group's unallocated extents (VG name) as it is. Repeatable."],
  },
  {
    long: 'in-place', aliases: ['inplace'], arg: 'none', usage: ['--in-place'],
    summary: 'Discard free space in the image itself instead of copying',
    manual: [
      "Sparsify the image itself instead of writing a copy: the guest's free space is given back to the host as holes (a punched hole in a file, BLKDISCARD on a block device) and the image keeps its length (see --compact to shorten it). The image must not be in use: QEMU's image lock is taken and a running VM's disk is refused.",
      'Storage that cannot punch holes makes it exit with status 3, as virt-sparsify does. Not allowed with --check-tmpdir (other than warn), --compress, --convert, -o or --tmp.',
    ],
  },
  {
    long: 'key', arg: 'required', usage: ['--key ID:key:KEY', '--key ID:file:FILE'],
    summary: "Key (passphrase) of a LUKS volume: ID is a device (/dev/sda2, /dev/VG/LV), a LUKS UUID or 'all'; file: uses the file's first line. A key on the command line is visible to other users: prefer file: or --keys-from-stdin",
    manual: [
      "The key (passphrase) of a LUKS1 or LUKS2 volume, to sparsify what is inside it. ID is the volume's device (/dev/sda2, /dev/VG/LV), its LUKS UUID, or all. With key: the passphrase follows; with file: it is the first line of FILE, without its newline. Repeatable. A volume without a key is kept whole.",
      'A key given on the command line can be seen by other users in the process list: prefer file: (a file of mode 0600) or --keys-from-stdin. A key that opens no keyslot stops the run with an error naming the device; nothing is written. ID:clevis is not supported.',
    ],
  },
  {
    long: 'keys-from-stdin', arg: 'none', usage: ['--keys-from-stdin'],
    summary: 'Read keys from standard input, one per line (prompted on a terminal)',
    manual: ['Read the keys of the encrypted volumes from standard input, one per line, in the order the volumes are found; on a terminal, each volume is prompted for.'],
  },
  { long: 'long-options', arg: 'none' },
  {
    long: 'machine-readable', arg: 'optional', usage: ['--machine-readable[=FMT]'], complete: ['file:', 'fd:', 'stream:stdout', 'stream:stderr'],
    summary: 'Machine-readable output (FMT: file:NAME, fd:N, stream:stdout, stream:stderr)',
    manual: ['Without a disk, print the capabilities of this sparsify, one per line, and exit. With a disk, write progress as N/M lines (and image-end-offset after --compact on a block device) to FMT: file:NAME, fd:N, stream:stdout (the default) or stream:stderr. For programs that drive sparsify, as VDSM drives virt-sparsify.'],
  },
  {
    long: 'o', short: 'o', arg: 'required', usage: ['-o OPTS'],
    summary: 'Output format options, e.g. cluster_size=65536,compat=1.1',
    manual: ["Options of the output format, as qemu-img create's -o takes them: comma-separated key=value pairs such as cluster_size=65536,compat=1.1 (qcow2), subformat=streamOptimized (vmdk) or subformat=fixed (vpc). An unknown key is an error that lists the valid ones. Copy mode only."],
  },
  {
    long: 'quiet', short: 'q', arg: 'none', usage: ['-q, --quiet'],
    summary: 'Quiet',
    manual: ['Print no status or progress, only warnings and errors.'],
  },
  { long: 'short-options', arg: 'none' },
  {
    long: 'tmp', arg: 'required', usage: ['--tmp DIR|BLOCKDEV|prebuilt:FILE'], complete: 'files',
    summary: 'Accepted and checked; sparsify needs no temporary space and writes none there',
    manual: ["Accepted as virt-sparsify accepts it, and checked: a directory, a block device, or prebuilt:FILE (an overlay that must be backed by the input). sparsify needs no temporary space and writes nothing there; unlike virt-sparsify it never erases the block device. Copy mode only."],
  },
  {
    long: 'trim-vm', arg: 'required', usage: ['--trim-vm NAME'],
    summary: 'Give a running VM\'s free space back without downtime: its guest agent runs fstrim (needs discard=\'unmap\' on its disks)',
    manual: [
      "Trim the running libvirt VM NAME (name or UUID) instead of sparsifying an image: the guest's own agent (qemu-guest-agent) runs fstrim on its mounted filesystems, and QEMU turns the discards into holes in the images. Checked first, each refused with its reason (exit 1): the VM runs and is not migrating; every writable disk's live <driver> has discard='unmap' (without it the trim stops at QEMU); its format is raw or qcow2; the agent answers guest-ping within 5 s. Then each image's allocated bytes before and after are printed, and what the guest says it trimmed per mountpoint. A sparsify extension.",
    ],
  },
  {
    long: 'verbose', short: 'v', arg: 'none', usage: ['-v, --verbose'],
    summary: 'Verbose messages',
    manual: ['Print more about what is done: the layers opened, each decision with its reason.'],
  },
  {
    long: 'version', short: 'V', arg: 'none', usage: ['-V, --version'],
    summary: 'Print the version',
    manual: ['Print the version and the commit this sparsify was built from, and exit.'],
  },
  {
    long: 'wrap', arg: 'none', usage: ['--wrap'],
    summary: 'Wrap long messages',
    manual: ["Wrap warning and informational messages at the terminal's width."],
  },
  {
    long: 'x', short: 'x', arg: 'none', usage: ['-x'],
    summary: 'Trace the steps taken',
    manual: ['Trace each step taken: every structure read, with its offset.'],
  },
  {
    long: 'zero', arg: 'required', usage: ['--zero PART|LV'], complete: 'devices',
    summary: 'Zero this whole partition or logical volume',
    manual: ['Give back the whole of this partition or logical volume (/dev/sda1, /dev/VG/LV), whatever it holds: in the result it reads as zeros (inside an encrypted volume, as noise). Repeatable.'],
  },
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
  /** --trim-vm: the VM, and --connect: its libvirt. */
  trimVm?: string;
  connect?: string;
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
      case 'connect': o.connect = value; break;
      case 'trim-vm': o.trimVm = value; break;
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

/** Listed by neither --long-options nor --help, as in virt-sparsify (its getopt adds them itself). */
const SELF_LISTING = new Set(['long-options', 'short-options']);

/** The long options, each with its dashes, as --long-options prints them (guestfs-tools' podcheck reads this). */
export function longOptionList(): string[] {
  return OPTION_SPECS.filter((s) => s.long.length > 1 && !SELF_LISTING.has(s.long))
    .flatMap((s) => [s.long, ...(s.aliases ?? [])])
    .map((n) => `--${n}`)
    .sort();
}

export function shortOptionList(): string[] {
  return OPTION_SPECS.filter((s) => s.short).map((s) => `-${s.short}`).sort();
}
