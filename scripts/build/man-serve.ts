/**
 * sparsify-serve(1): the service's manual, from the settings table (src/service/config.ts), which
 * also gives `sparsify serve --help`, the environment variables and the config file's keys.
 */
import { SETTINGS, SERVE_FLAGS } from '../../src/service/config.js';
import { LOG_FORMATS } from '../../src/service/logging.js';
import { ManPage, bold, esc, italic } from './roff.js';

const form = (flag: string, arg?: string): string => `${bold(`--${flag}`)}${arg ? ` ${italic(arg)}` : ''}`;

export function serveManPage(version: string): string {
  const m = new ManPage('sparsify-serve', 1, `sparsify ${version}`, 'User Commands');
  m.section('Name').raw('sparsify\\-serve \\- the sparsify service: REST API, storage jobs and web UI for a pool of disks');
  m.section('Synopsis').raw(`${bold('sparsify serve')} [${italic('options')}]`);

  m.section('Description')
    .para('sparsify serve runs one host of the sparsify service: the HTTP API, the web UI, the scanner of the storage domains (folders of images) and the job runner. It does for a pool of disks what oVirt\'s Sparsify action does: it shows how much each disk would give back, runs sparsify jobs (in place, or copy-and-replace) that survive restarts, refuses disks that a running VM uses (read from libvirt), and applies a policy ("needs sparsify" thresholds and an optional schedule).')
    .para('Alone it keeps its state in an embedded SQLite database in its data folder. Several hosts given one PostgreSQL database (--database) work as one service: each job goes to one host that has its domain mounted, a host that dies has its jobs taken over, and every host serves the whole cluster\'s API and UI.')
    .para('Calls that change anything need the API token (Authorization: Bearer TOKEN); when the service listens beyond localhost every call needs it. The API is documented at /api/docs on the running service.');

  m.section('Options');
  for (const s of SETTINGS) {
    if (!s.flag || s.hidden) continue;
    const where = [s.env ? `Environment: ${s.env}.` : '', `Config file key: ${s.key}.`, s.defaultText ? `Default: ${s.defaultText}.` : ''].filter(Boolean).join(' ');
    m.item([form(s.flag, s.arg)], [`${s.help[0]!.toUpperCase()}${s.help.slice(1)}.`, where]);
  }
  for (const f of SERVE_FLAGS) m.item([form(f.flag, f.arg)], [`${f.help[0]!.toUpperCase()}${f.help.slice(1)}.${f.env ? ` Environment: ${f.env}.` : ''}`]);
  m.item([bold('-h') + ', ' + bold('--help')], ['Print the options with their environment variables and defaults, and exit.']);

  m.section('Configuration')
    .para('Every setting has a flag, an environment variable and a key in the JSON config file. Flags win over the environment, which wins over the config file, which wins over the defaults. sparsify serve --check-config prints the value of each setting and the layer that gave it, checks the files the settings name, and exits.')
    .para('One config file is read: the one given with --config, else the one SPARSIFY_CONFIG names, else /etc/sparsify/config.json, else DATA_DIR/config.json, the first that is given or exists. It is a JSON object of settings by key, for example {"domains": ["/srv/images"], "port": 8080}. An unknown key or a bad value stops the start with a message naming it.')
    .para('The config file, the LUKS keys file and the token file may hold secrets (the API token, the database password, LUKS passphrases), so each must be a regular file of mode 0600, owned by the user the service runs as: otherwise the service refuses to start and says how to fix it.');

  m.section('Files')
    .item([esc('/etc/sparsify/config.json')], ['The system-wide config file (mode 0600). SPARSIFY_CONFIG_DIR names another folder instead of /etc/sparsify.'])
    .item([esc('/etc/sparsify/luks-keys')], ['LUKS keys by volume UUID, read when --keys-file is not given: a JSON object {"UUID": "passphrase"} or UUID:key:PASSPHRASE and UUID:file:PATH lines (mode 0600). Disks whose volume UUID has a key are sparsified inside their encrypted volumes; the others are kept whole.'])
    .item([esc('/etc/sparsify/sparsify.env')], ['The environment file the systemd unit reads: SPARSIFY_DATABASE_URL, SPARSIFY_TOKEN and any other SPARSIFY_ variable (mode 0600).'])
    .item([italic('DATA_DIR') + esc('/sparsify.db')], ['The embedded SQLite database (without --database). It needs the optional package better-sqlite3.'])
    .item([italic('DATA_DIR') + esc('/token')], ['The API token, generated at first start when none is given (mode 0600).'])
    .item([italic('DATA_DIR') + esc('/luks-keys')], ['LUKS keys, read when neither --keys-file nor /etc/sparsify/luks-keys is there.'])
    .item([italic('DATA_DIR') + esc('/config.json')], ['A config file for this data folder, read when no other is (it cannot move the data folder).'])
    .item([italic('DATA_DIR') + esc('/images')], ['The default storage domain, when none is given.'])
    .item([italic('DOMAIN') + esc('/.sparsify-domain.json')], ["The storage domain's UUID, written when the folder is first attached: hosts that mount one share at different paths agree on its disks."])
    .item([esc('$PREFIX/lib/node_modules/sparsify/packaging/sparsify.service')], ['A hardened systemd unit for sparsify serve (see Running under systemd).']);

  m.section('Environment');
  for (const s of SETTINGS) if (s.env && !s.hidden) m.item([bold(s.env)], [`The setting ${s.key}, as --${s.flag} sets it.`]);
  m.item([bold('SPARSIFY_CONFIG')], ['The config file, as --config names it.'])
    .item([bold('SPARSIFY_CONFIG_DIR')], ['The configuration folder instead of /etc/sparsify.'])
    .item([bold('NO_COLOR')], ['When set, pretty logs on a terminal are not coloured.']);

  m.section('Logs').para(
    `Logs go to standard error, in one of these formats (--log-format ${LOG_FORMATS.join('|')}): json, one JSON object per line with the level, the time, the host name and the message, each request's lines with its request id and each job's lines with the job id, for journald, a log collector or jq; or pretty, one short line per event (time, level, message, the job and disk it concerns, a request as its method, path, status and duration), for a person. By default they are pretty when standard error is a terminal and JSON otherwise. --log-level chooses how much. What the service says once at start (its address, its token when generated) goes to standard output.`,
  );

  m.section('Signals').para('SIGTERM and SIGINT stop the service cleanly: it stops taking jobs, and the jobs it is running hand themselves back within --shutdown-timeout seconds (they run again on another host, or here after the restart; sparsify is safe to repeat), then it exits with status 0. Whatever hangs (a database that does not answer, a stuck share), it exits 5 seconds later with status 1.');

  m.section('Running under systemd')
    .para('The package ships a hardened unit, packaging/sparsify.service: a dedicated user, NoNewPrivileges, ProtectSystem=strict with the data folder and the storage domains as the only writable paths, ProtectHome, PrivateTmp, no capabilities (block devices need only the disk group), an EnvironmentFile for the database URL and the token, a restart on failure, and a stop timeout longer than --shutdown-timeout. It starts the sparsify that the PATH finds (/usr/local/bin or /usr/bin, as the npm prefix has it). The images must be writable by its user: on an oVirt host, where they belong to vdsm:kvm, add SupplementaryGroups=kvm; to read VMs from qemu:///system, add libvirt. To install it:')
    .example([
      'useradd --system --home-dir /var/lib/sparsify --shell /usr/sbin/nologin sparsify',
      'cp "$(npm root -g)/sparsify/packaging/sparsify.service" /etc/systemd/system/',
      'install -d -m 0750 -o sparsify /etc/sparsify',
      'install -m 0600 -o sparsify "$(npm root -g)/sparsify/packaging/sparsify.env" /etc/sparsify/   # then edit it',
      'systemctl edit sparsify   # ReadWritePaths= for each storage domain',
      'systemctl enable --now sparsify',
    ])
    .para('Without systemd (a plain init, a container), run sparsify serve in the foreground as an unprivileged user with the same environment, let the supervisor restart it on failure, and stop it with SIGTERM, giving it --shutdown-timeout plus 5 seconds before SIGKILL. In a container, mount the data folder and the domains as volumes, pass --host 0.0.0.0 and the token in the environment, and publish the port.');

  m.section('Exit status')
    .item([bold('0')], ['Stopped cleanly on SIGTERM or SIGINT; or --check-config found no problem; or --help.'])
    .item([bold('1')], ['It could not start (a bad setting, a file with the wrong mode, a database that cannot be used, the port in use, another sparsify serve on this data folder, the optional better-sqlite3 missing for SQLite), said in one line on standard error; or --check-config found a problem; or it did not stop in time.']);

  m.section('Examples')
    .para('One host on its own, for images under /srv/images, with the web UI on all addresses:')
    .example(['sparsify serve --data-dir /var/lib/sparsify --domain /srv/images --host 0.0.0.0'])
    .para('One host of a cluster; the database URL and the token come from the environment, not the command line, which other users can see:')
    .example([
      "export SPARSIFY_DATABASE_URL='postgres://sparsify:SECRET@db.example:5432/sparsify'",
      "export SPARSIFY_TOKEN='the-same-token-on-every-host'",
      'sparsify serve --host 0.0.0.0 --host-name hv1 --domain /rhev/data-center/mnt/nfs1 --concurrency 2',
    ])
    .para('What a start would use, and why:')
    .example(['sparsify serve --check-config']);

  m.section('See also').raw(`${bold('sparsify')}(1), ${bold('systemd.exec')}(5), ${bold('virsh')}(1)`);
  return m.text();
}
