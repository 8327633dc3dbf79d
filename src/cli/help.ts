/** The --help text: the synopsis, then every documented option of the option table. */
import { OPTION_SPECS, type CliOptionSpec } from './options.js';

/** Where the option descriptions start, and the width they wrap at (a terminal's 80 columns). */
const TEXT_COLUMN = 28;
const WIDTH = 80;

/** Split `text` into lines of at most `width` characters, at spaces (a longer word gets its own line). */
export function wrapWords(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/** One option's lines: its forms in the left column, its summary wrapped beside them. */
function optionLines(spec: CliOptionSpec): string[] {
  const left = spec.usage ?? [];
  const text = wrapWords(spec.summary ?? '', WIDTH - TEXT_COLUMN);
  const out: string[] = [];
  let t = 0;
  for (const form of left) {
    const head = `  ${form}`;
    if (head.length < TEXT_COLUMN - 1 && t < text.length) out.push(head.padEnd(TEXT_COLUMN) + text[t++]);
    else out.push(head);
  }
  for (; t < text.length; t++) out.push(' '.repeat(TEXT_COLUMN) + text[t]);
  return out;
}

/** The options --help lists, in the table's order: those with a usage (the others are only accepted). */
export function documentedOptions(): CliOptionSpec[] {
  return OPTION_SPECS.filter((s) => s.usage);
}

export const SYNOPSIS = [
  ['[--options] indisk outdisk', 'copy mode: write a new sparse image'],
  ['[--options] --in-place disk', 'in-place mode: discard free space'],
  ['[--options] --in-place --compact disk', '... and shorten the image'],
  ['--analyze [--json] disk', 'show the disk map and what would be reclaimed'],
] as const;

/** Exit codes: the code, a few words for --help, and the manual's sentence. */
export const EXIT_STATUS = [
  [0, 'success', 'Success.'],
  [1, 'error (including ^C)', 'An error, said in one line on standard error; also when interrupted (^C, SIGTERM). Nothing is left half-written: a copy is written under a temporary name and renamed at the end, and an in-place run stops at a consistent point.'],
  [2, '--check-tmpdir=fail', 'With --check-tmpdir=fail, when the temporary directory is too small. sparsify needs no temporary space, so it does not happen; the code is kept for scripts written for virt-sparsify.'],
  [3, 'in-place discard not supported', 'In place, the storage cannot discard (punch holes): plain --in-place gives nothing back there. --compact works there.'],
] as const;

export function helpText(prog: string): string {
  const forms: Array<readonly [string, string]> = [
    ...SYNOPSIS.map(([args, what]) => [`${prog} ${args}`, what] as const),
    [`${prog} serve [--options]`, `REST API, storage jobs and web UI (${prog} serve --help)`],
  ];
  const width = Math.max(...forms.map(([f]) => f.length)) + 2;
  return `${prog}: make a virtual machine disk image thin-provisioned again

${forms.map(([f, what]) => ` ${f.padEnd(width)}${what}`).join('\n')}

Options (virt-sparsify compatible; long options also work with one dash and as unique prefixes):
${documentedOptions().flatMap(optionLines).join('\n')}

Exit status: ${EXIT_STATUS.map(([code, what]) => `${code} ${what}`).join(', ')}.
The manual: man sparsify
`;
}
