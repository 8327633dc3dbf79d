/** The --help text. */
export function helpText(prog: string): string {
  return `${prog}: make a virtual machine disk image thin-provisioned again

 ${prog} [--options] indisk outdisk          copy mode: write a new sparse image
 ${prog} [--options] --in-place disk         in-place mode: discard free space
 ${prog} --analyze [--json] disk             show the disk map and what would be reclaimed
 ${prog} serve [--options]                   REST API, storage jobs and web UI (${prog} serve --help)

Options (virt-sparsify compatible; long options also work with one dash and as unique prefixes):
  --analyze                 Print the disk map (tables, volumes, filesystems, free space); write nothing
  --json                    With --analyze: print it as JSON
  --check-tmpdir MODE       ignore|continue|warn|fail (copy mode needs no temporary space: always passes)
  --colors, --colours       Colour the messages
  --compact                 With --in-place: also move the kept data down into the freed space and
                              shorten the image (qcow2, vdi, vmdk, vpc, vhdx), so its length shrinks
                              too; works where holes cannot be punched. On a block device the new
                              image end is printed, to reduce the volume to
  --compress                Compress the output (qcow2, streamOptimized vmdk)
  --convert FMT             Output format (default: the input's)
  --format FMT              Input format (default: detected; give 'raw' for untrusted raw images)
  --ignore FS|VG            Do not reclaim the free space of this filesystem or volume group
  --in-place                Discard free space in the image itself instead of copying
  --key ID:key:KEY          Key (passphrase) of a LUKS volume: ID is a device (/dev/sda2, /dev/VG/LV),
  --key ID:file:FILE          a LUKS UUID or 'all'; file: uses the file's first line. A key on the
                              command line is visible to other users: prefer file: or --keys-from-stdin
  --keys-from-stdin         Read keys from standard input, one per line (prompted on a terminal)
  --echo-keys               Echo the keys typed at the prompt
  --machine-readable[=FMT]  Machine-readable output (FMT: file:NAME, fd:N, stream:stdout, stream:stderr)
  -o OPTS                   Output format options, e.g. cluster_size=65536,compat=1.1
  -q, --quiet               Quiet
  --tmp DIR|BLOCKDEV|prebuilt:FILE
                            Accepted and checked; sparsify needs no temporary space and writes none there
  -v, --verbose             Verbose messages
  -V, --version             Print the version
  --wrap                    Wrap long messages
  -x                        Trace the steps taken
  --zero PART|LV            Zero this whole partition or logical volume
  --help                    This help

Exit status: 0 success, 1 error (including ^C), 2 --check-tmpdir=fail, 3 in-place discard not supported.
`;
}
