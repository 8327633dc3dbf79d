/**
 * virt-sparsify parses its command line with getopt_long_only. These are its rules, so scripts
 * written for it work unchanged:
 * - a long option may be written with one dash (-in-place) and abbreviated to any unique prefix;
 * - a single-dash word that is not a long option falls back to short options (-vx, -ofoo);
 * - `--opt=value` and `--opt value` both work; options may follow the file names; `--` ends options.
 * The result is canonical tokens that the option parser reads without any of that ambiguity.
 */
export type ArgKind = 'none' | 'required' | 'optional';

export interface OptionSpec {
  /** Canonical long name; aliases map to it. */
  long: string;
  aliases?: string[];
  short?: string;
  arg: ArgKind;
}

export interface ParsedOption {
  name: string;
  value?: string;
  /** As the user wrote it, for messages. */
  written: string;
}

export interface GetoptResult {
  options: ParsedOption[];
  operands: string[];
}

export class GetoptError extends Error {}

export function getoptLongOnly(argv: readonly string[], specs: readonly OptionSpec[]): GetoptResult {
  const longNames = new Map<string, OptionSpec>();
  for (const s of specs) {
    longNames.set(s.long, s);
    for (const a of s.aliases ?? []) longNames.set(a, s);
  }
  const shorts = new Map<string, OptionSpec>();
  for (const s of specs) if (s.short) shorts.set(s.short, s);

  const options: ParsedOption[] = [];
  const operands: string[] = [];
  let i = 0;

  const lookupLong = (word: string, dashes: string): OptionSpec | undefined | 'ambiguous' => {
    const exact = longNames.get(word);
    if (exact) return exact;
    const candidates = [...longNames.entries()].filter(([n]) => n.startsWith(word));
    const distinct = new Set(candidates.map(([, s]) => s));
    if (distinct.size === 1) return candidates[0]![1];
    if (distinct.size > 1) {
      const list = candidates.map(([n]) => `'${dashes}${n}'`).join(' ');
      throw new GetoptError(`option '${dashes}${word}' is ambiguous; possibilities: ${list}`);
    }
    return undefined;
  };

  const takeLong = (spec: OptionSpec, written: string, inlineValue: string | undefined): void => {
    if (spec.arg === 'none') {
      if (inlineValue !== undefined) throw new GetoptError(`option '${written}' doesn't allow an argument`);
      options.push({ name: spec.long, written });
    } else if (spec.arg === 'optional') {
      options.push({ name: spec.long, value: inlineValue, written });
    } else {
      let value = inlineValue;
      if (value === undefined) {
        if (i + 1 >= argv.length) throw new GetoptError(`option '${written}' requires an argument`);
        value = argv[++i]!;
      }
      options.push({ name: spec.long, value, written });
    }
  };

  const takeShorts = (word: string): void => {
    for (let k = 0; k < word.length; k++) {
      const c = word[k]!;
      const spec = shorts.get(c);
      if (!spec) throw new GetoptError(`invalid option -- '${c}'`);
      if (spec.arg === 'none') {
        options.push({ name: spec.long, written: `-${c}` });
        continue;
      }
      const rest = word.slice(k + 1);
      if (rest) options.push({ name: spec.long, value: rest, written: `-${c}` });
      else if (spec.arg === 'required') {
        if (i + 1 >= argv.length) throw new GetoptError(`option requires an argument -- '${c}'`);
        options.push({ name: spec.long, value: argv[++i]!, written: `-${c}` });
      } else options.push({ name: spec.long, written: `-${c}` });
      return;
    }
  };

  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const body = a.slice(2);
      const eq = body.indexOf('=');
      const word = eq < 0 ? body : body.slice(0, eq);
      const spec = lookupLong(word, '--');
      if (!spec || spec === 'ambiguous') throw new GetoptError(`unrecognized option '--${word}'`);
      takeLong(spec, `--${word}`, eq < 0 ? undefined : body.slice(eq + 1));
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      const body = a.slice(1);
      // A lone letter that is a short option is always the short option (-v is not a prefix of -verbose).
      if (body.length === 1 && shorts.has(body)) {
        takeShorts(body);
        continue;
      }
      const eq = body.indexOf('=');
      const word = eq < 0 ? body : body.slice(0, eq);
      // An ambiguous prefix is an error, as in glibc; only an unknown word falls back to short options.
      const spec = lookupLong(word, '-');
      if (spec && spec !== 'ambiguous') {
        takeLong(spec, `-${word}`, eq < 0 ? undefined : body.slice(eq + 1));
        continue;
      }
      if (!shorts.has(body[0]!)) throw new GetoptError(`unrecognized option '-${word}'`);
      takeShorts(body);
      continue;
    }
    operands.push(a);
  }
  return { options, operands };
}
