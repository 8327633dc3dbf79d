/**
 * sparsify(1): the command line's manual, from the option table (src/cli/options.ts), the synopsis
 * and the exit codes that --help prints (src/cli/help.ts). The prose around them is here.
 */
import { documentedOptions, SYNOPSIS, EXIT_STATUS } from '../../src/cli/help.js';
import { OPTION_SPECS } from '../../src/cli/options.js';
import { ManPage, bold, esc, italic, optionForm } from './roff.js';

/** `[--options] indisk outdisk` in roff: options bold, operands italic. */
function synopsisLine(prog: string, args: string): string {
  const words = args.split(' ').map((w) => {
    if (w === '[--options]') return `[${italic('options')}]`;
    if (/^\[?-/.test(w)) return w.startsWith('[') ? `[${bold(w.slice(1, -1))}]` : bold(w);
    return italic(w);
  });
  return `${bold(prog)} ${words.join(' ')}`;
}

export function sparsifyManPage(version: string): string {
  const m = new ManPage('sparsify', 1, `sparsify ${version}`, 'User Commands');
  m.section('Name').raw(`sparsify, virt\\-sparsify \\- make a virtual machine disk image thin\\-provisioned again`);

  m.section('Synopsis');
  for (const [args] of SYNOPSIS) m.raw('.PP').raw(synopsisLine('sparsify', args));
  m.raw('.PP').raw(`${bold('sparsify serve')} [${italic('options')}]`);
  m.raw('.PP').raw(`${bold('virt-sparsify')} ...`);

  m.section('Description')
    .para("sparsify gives a virtual machine disk image's free space back to the host: the space that the guest's filesystems no longer use, but that the image still holds because the guest once wrote there. It is a drop-in replacement for virt-sparsify(1) that needs no appliance VM, no root and no mounting: it reads the partition tables (MBR, GPT), volume managers (LVM2), encrypted volumes (LUKS, with a key) and filesystem allocation maps (ext2/3/4, XFS, btrfs, NTFS, FAT, exFAT, Linux swap) itself, and touches only space that a structure it parsed proves free. When in doubt (a journal that needs recovery, a dirty or hibernated filesystem, an unknown feature), it keeps the space and says why in a warning.")
    .para('Copy mode writes a new sparse image, in the same format or another (--convert), and never writes to the input. The copy is written under a temporary name in the output\'s folder, flushed, and renamed into place only when complete.')
    .para("In-place mode (--in-place) gives the free space back inside the image itself: a hole is punched in the image file, or the range is discarded on a block device, and the image's own maps stop pointing at it. With --compact it also moves the data that is kept down and shortens the image. It is safe at every instant: a power cut leaves the image consistent, at worst with a leaked cluster that the next run gives back.")
    .para('--analyze prints what sparsify sees (the disk map: each partition, volume and filesystem with its size, use and free space) and what it would give back, and writes nothing.')
    .para('Image formats read: raw, qcow2 (v2 and v3, backing chains, zlib and zstd compression, extended L2 entries, an external data file), vdi, vmdk (monolithicSparse, streamOptimized, flat, split), vpc (VHD fixed, dynamic and differencing) and vhdx. Installed as virt-sparsify (the package installs both names), the messages carry that name, so scripts and programs written for virt-sparsify (VDSM, for one) work unchanged.')
    .para('sparsify serve runs the service: a REST API, storage jobs and a web UI for a pool of disks; see sparsify-serve(1).');

  m.section('Options');
  m.para('The command line is virt-sparsify\'s, parsed as getopt_long_only(3) parses it: a long option may be written with one dash (-in-place) and abbreviated to any unique prefix (--conv qcow2); --opt=value and --opt value both work; options may follow the file names; -- ends the options.');
  for (const spec of documentedOptions()) m.item(spec.usage!.map(optionForm), spec.manual ?? [spec.summary ?? '']);
  const accepted = OPTION_SPECS.filter((s) => !s.usage && s.long !== 'long-options' && s.long !== 'short-options').map((s) => `--${s.long}`);
  m.para(`Also accepted, for scripts written for virt-sparsify: ${accepted.join(', ')} (it has nothing to do here), and --long-options and --short-options, which list the options one per line for shell completion and for guestfs-tools' documentation check, and exit.`);

  m.section('Exit status');
  for (const [code, , sentence] of EXIT_STATUS) m.item([bold(String(code))], [sentence]);

  m.section('Environment')
    .item([bold('UV_THREADPOOL_SIZE')], ['Threads for reads, writes and compression. When unset, sparsify sets it to the number of cores plus 8.'])
    .item([bold('TMPDIR')], ['Not used: sparsify writes no temporary files (virt-sparsify keeps its overlay there).'])
    .item([bold('LIBGUESTFS_*')], ['Not used: there is no appliance.']);

  m.section('Files')
    .item([esc('.') + italic('OUTDISK') + esc('.sparsify-') + italic('PID') + esc('.tmp')], ["Copy mode writes the new image under this temporary name in the output's folder, and renames it to OUTDISK once it is complete and flushed. An interrupted run removes it."])
    .item([italic('FILE')], ['With --key ID:file:FILE, the key is the first line of FILE, without its newline. Keep it mode 0600.'])
    .item([esc('$PREFIX/lib/node_modules/sparsify/dist/completion/sparsify')], ['Bash completion for sparsify and virt-sparsify (options, --convert and --format formats, files). Link it into /usr/local/share/bash-completion/completions/ under both names, or source it from ~/.bashrc.']);

  m.section('Examples')
    .para('A sparse copy, in the same format:')
    .example(['sparsify disk.img disk-sparse.img'])
    .para('A compressed qcow2 from a raw image:')
    .example(['sparsify --convert qcow2 --compress disk.img disk.qcow2'])
    .para('Give the free space back inside the image, then also shorten it:')
    .example(['sparsify --in-place /var/lib/libvirt/images/vm.qcow2', 'sparsify --in-place --compact /var/lib/libvirt/images/vm.qcow2'])
    .para('See what would come back, without writing; as JSON for a script:')
    .example(['sparsify --analyze disk.qcow2', "sparsify --analyze --json disk.qcow2 | jq .reclaimableBytes"])
    .para('An encrypted guest, its key in a file of mode 0600; leave /dev/sda1 alone and zero the swap volume:')
    .example(['sparsify --key /dev/sda2:file:/root/vm.key --ignore /dev/sda1 --zero /dev/vg0/swap vm.img vm-sparse.img'])
    .para('As a program drives virt-sparsify: the capabilities, then progress on a file descriptor:')
    .example(['virt-sparsify --machine-readable', 'virt-sparsify --machine-readable=fd:3 --in-place disk.qcow2 3>progress.log']);

  m.section('Differences from virt-sparsify');
  m.bullets([
    'No appliance and no temporary overlay: sparsify reads the image directly, so --check-tmpdir always passes and --tmp is checked but never written (a block device given as --tmp is not erased).',
    'Only space that a parsed structure proves free is given back; a filesystem that cannot be trusted is kept whole with a warning, where virt-sparsify skips unknown content silently. It also gives back what fstrim cannot see, such as ext4 inode tables that mke2fs left unzeroed.',
    'Encrypted volumes are sparsified inside, given a key: virt-sparsify writes zeros that are encrypted, so they are not zeros on the host.',
    'In-place mode works for raw files, block devices, qcow2, vdi, vmdk, vpc and vhdx (virt-sparsify: raw and qcow2), and --compact shortens the image, even where holes cannot be punched.',
    '--analyze, --json and --compact are sparsify\'s own. --machine-readable lists capabilities that really work, including compact.',
    'Not supported (a clear error, never ignored): writing the copy to a block device; in place on streamOptimized, split or flat vmdk, differencing vhdx, and qcow2 with internal snapshots or an external data file (copy mode works); LUKS keys from Clevis or a TPM (ID:clevis), ciphers other than AES-XTS and AES-CBC-ESSIV, LUKS2 integrity, detached LUKS headers.',
  ]);

  m.section('See also').raw(`${bold('sparsify-serve')}(1), ${bold('virt-sparsify')}(1), ${bold('qemu-img')}(1), ${bold('fstrim')}(8)`);
  return m.text();
}
