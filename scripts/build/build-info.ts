/**
 * dist/build-info.json: the commit a build was made from, for `sparsify --version`. Read from git
 * when the build runs in a checkout (with -dirty when tracked files differ from that commit);
 * 'unknown' when it does not (a build from an unpacked tarball).
 */
import { execFileSync } from 'node:child_process';

function git(args: string[], cwd: string): string | undefined {
  try {
    return execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

export function buildInfo(root: string): { commit: string } {
  const head = git(['rev-parse', '--short=12', 'HEAD'], root);
  if (!head) return { commit: 'unknown' };
  const dirty = git(['status', '--porcelain', '--untracked-files=no'], root);
  return { commit: dirty ? `${head}-dirty` : head };
}
