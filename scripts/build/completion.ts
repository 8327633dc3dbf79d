/**
 * Bash completion for sparsify and virt-sparsify, from the option table (src/cli/options.ts), the
 * format registry (the formats --format reads and --convert writes) and the service's settings
 * table (sparsify serve's flags and their values). Plain bash: it needs no bash-completion
 * helpers, so sourcing the file alone is enough.
 */
import { OPTION_SPECS, type ArgCompletion } from '../../src/cli/options.js';
import { formatDrivers } from '../../src/formats/registry.js';
import { SETTINGS, SERVE_FLAGS } from '../../src/service/config.js';

/** The words bash offers after an option, or how to find them. */
type Offer = { words: readonly string[] } | 'files' | 'dirs' | 'none';

function offerFor(c: ArgCompletion | undefined): Offer {
  if (c === undefined || c === 'devices') return 'none';
  if (c === 'files' || c === 'dirs') return c;
  if (c === 'formats') return { words: formatDrivers().map((d) => d.name) };
  if (c === 'output-formats') return { words: formatDrivers().filter((d) => d.createWriter).map((d) => d.name) };
  return { words: c };
}

/** A `case` arm per option that takes an argument, keyed by every way of writing it. */
function caseArms(entries: Array<{ names: string[]; offer: Offer }>): string {
  return entries
    .filter((e) => e.offer !== 'none')
    .map(({ names, offer }) => {
      const body =
        offer === 'files'
          ? `_sparsify_reply "$(compgen -f -- "$cur")"`
          : offer === 'dirs'
            ? `_sparsify_reply "$(compgen -d -- "$cur")"`
            : `_sparsify_reply "$(compgen -W '${(offer as { words: readonly string[] }).words.join(' ')}' -- "$cur")"`;
      return `    ${names.join('|')}) ${body}; return 0 ;;`;
    })
    .join('\n');
}

export function bashCompletion(): string {
  const cliOptions: string[] = [];
  const cliArms: Array<{ names: string[]; offer: Offer }> = [];
  for (const s of OPTION_SPECS) {
    if (!s.usage) continue;
    const longs = [s.long, ...(s.aliases ?? [])].filter((n) => n.length > 1 && n !== 'inplace');
    cliOptions.push(...longs.map((n) => `--${n}`), ...(s.short ? [`-${s.short}`] : []));
    if (s.arg === 'required') cliArms.push({ names: [...longs.flatMap((n) => [`--${n}`, `-${n}`]), ...(s.short ? [`-${s.short}`] : [])], offer: offerFor(s.complete) });
  }
  const serveOptions = ['--help'];
  const serveArms: Array<{ names: string[]; offer: Offer }> = [];
  for (const s of SETTINGS) {
    if (!s.flag || s.hidden) continue;
    serveOptions.push(`--${s.flag}`);
    const offer: Offer =
      s.kind.t === 'path' || s.kind.t === 'paths'
        ? s.key === 'dataDir' || s.key === 'domains'
          ? 'dirs'
          : 'files'
        : s.kind.t === 'enum'
          ? { words: s.kind.values }
          : s.kind.t === 'bool'
            ? { words: ['true', 'false'] }
            : 'none';
    serveArms.push({ names: [`--${s.flag}`], offer });
  }
  for (const f of SERVE_FLAGS) {
    serveOptions.push(`--${f.flag}`);
    if (f.arg) serveArms.push({ names: [`--${f.flag}`], offer: 'files' });
  }

  return `# bash completion for sparsify and virt-sparsify: options, the formats of --format and
# --convert, files, and sparsify serve's flags. Generated from sparsify's option tables.
# Use: source this file, or link it as sparsify and virt-sparsify into
# /usr/local/share/bash-completion/completions/ (or ~/.local/share/bash-completion/completions/).

# One reply per line of $1 (no word splitting or globbing of file names).
_sparsify_reply() {
  [[ -n $1 ]] && mapfile -t COMPREPLY <<< "$1"
}

_sparsify() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
  COMPREPLY=()
  # --opt=value: bash splits at the '=', so the option is two words back.
  if [[ $cur == = ]]; then
    cur=
  elif [[ $prev == = ]]; then
    prev=\${COMP_WORDS[COMP_CWORD-2]}
  fi
  if [[ \${COMP_WORDS[1]} == serve && $COMP_CWORD -gt 1 ]]; then
    case $prev in
${caseArms(serveArms)}
      ${serveArms.filter((a) => a.offer === 'none').flatMap((a) => a.names).join('|')}) return 0 ;;
    esac
    if [[ $cur == -* || -z $cur ]]; then
      _sparsify_reply "$(compgen -W '${serveOptions.join(' ')}' -- "$cur")"
    fi
    return 0
  fi
  case $prev in
${caseArms(cliArms)}
  esac
  case $prev in
    ${cliArms.filter((a) => a.offer === 'none').flatMap((a) => a.names).join('|')}) return 0 ;;
  esac
  if [[ $cur == -* ]]; then
    _sparsify_reply "$(compgen -W '${cliOptions.join(' ')}' -- "$cur")"
    return 0
  fi
  if [[ $COMP_CWORD -eq 1 ]]; then
    _sparsify_reply "$(compgen -W 'serve' -- "$cur"; compgen -f -- "$cur")"
  else
    _sparsify_reply "$(compgen -f -- "$cur")"
  fi
  return 0
}

complete -o filenames -F _sparsify sparsify virt-sparsify
`;
}
