/**
 * Parser for LVM2's text metadata format (the same syntax as lvm.conf and vgcfgbackup files):
 *
 *   name { key = value ... }     sections, nested
 *   key = 12 | -1 | 1.5 | "str"  numbers and strings (\" and \\ escaped)
 *   key = [ v, v, ... ]          arrays of numbers and strings
 *   # comment to end of line
 *
 * The input is untrusted: nesting depth, node count and string sizes are bounded, and every
 * error names the line.
 */
import { CorruptError } from '../io/errors.js';

export type LvmValue = string | number | LvmValue[] | LvmSection;

export class LvmSection {
  readonly entries = new Map<string, LvmValue>();

  get(key: string): LvmValue | undefined {
    return this.entries.get(key);
  }

  section(key: string): LvmSection | undefined {
    const v = this.entries.get(key);
    return v instanceof LvmSection ? v : undefined;
  }

  string(key: string): string | undefined {
    const v = this.entries.get(key);
    return typeof v === 'string' ? v : undefined;
  }

  /** A non-negative safe integer, or undefined. */
  count(key: string): number | undefined {
    const v = this.entries.get(key);
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  }

  /** An array of strings (status and flags lists), or undefined. */
  strings(key: string): string[] | undefined {
    const v = this.entries.get(key);
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) return undefined;
    return v as string[];
  }

  /** Child sections in file order. */
  sections(): [string, LvmSection][] {
    const out: [string, LvmSection][] = [];
    for (const [k, v] of this.entries) if (v instanceof LvmSection) out.push([k, v]);
    return out;
  }
}

const MAX_DEPTH = 16;
const MAX_NODES = 1_000_000;

function isNameChar(c: number): boolean {
  // Anything but whitespace, controls and the syntax characters: LV names use [A-Za-z0-9+_.-].
  return c > 0x20 && c !== 0x7f && c !== 0x7b && c !== 0x7d && c !== 0x5b && c !== 0x5d && c !== 0x3d && c !== 0x2c && c !== 0x22 && c !== 0x23;
}

class Parser {
  private pos = 0;
  private line = 1;
  private nodes = 0;

  constructor(private readonly s: string) {}

  fail(msg: string): never {
    throw new CorruptError(`lvm2: metadata text line ${this.line}: ${msg}`);
  }

  private skip(): void {
    const s = this.s;
    while (this.pos < s.length) {
      const c = s.charCodeAt(this.pos);
      if (c === 0x0a) {
        this.line++;
        this.pos++;
      } else if (c === 0x20 || c === 0x09 || c === 0x0d) {
        this.pos++;
      } else if (c === 0x23) {
        while (this.pos < s.length && s.charCodeAt(this.pos) !== 0x0a) this.pos++;
      } else {
        return;
      }
    }
  }

  private peek(): string {
    this.skip();
    return this.pos < this.s.length ? this.s[this.pos]! : '';
  }

  private name(): string {
    this.skip();
    const start = this.pos;
    while (this.pos < this.s.length && isNameChar(this.s.charCodeAt(this.pos))) this.pos++;
    if (this.pos === start) this.fail(`expected a name, found ${JSON.stringify(this.s.slice(this.pos, this.pos + 10))}`);
    return this.s.slice(start, this.pos);
  }

  private count(): void {
    if (++this.nodes > MAX_NODES) this.fail(`more than ${MAX_NODES} values`);
  }

  private str(): string {
    this.pos++; // opening quote
    let out = '';
    let chunk = this.pos;
    const s = this.s;
    for (;;) {
      if (this.pos >= s.length) this.fail('unterminated string');
      const c = s.charCodeAt(this.pos);
      if (c === 0x22) {
        out += s.slice(chunk, this.pos);
        this.pos++;
        return out;
      }
      if (c === 0x5c) {
        out += s.slice(chunk, this.pos);
        if (this.pos + 1 >= s.length) this.fail('unterminated string');
        out += s[this.pos + 1];
        this.pos += 2;
        chunk = this.pos;
        continue;
      }
      if (c === 0x0a) this.line++;
      this.pos++;
    }
  }

  private scalar(): string | number {
    const c = this.peek();
    if (c === '"') return this.str();
    const start = this.pos;
    const m = /^[+-]?[0-9]+(\.[0-9]+)?/.exec(this.s.slice(start, start + 40));
    if (!m) this.fail(`expected a value, found ${JSON.stringify(this.s.slice(start, start + 10))}`);
    this.pos += m[0].length;
    if (this.pos < this.s.length && isNameChar(this.s.charCodeAt(this.pos)) && this.s[this.pos] !== '.') {
      this.fail(`bad number ${JSON.stringify(this.s.slice(start, this.pos + 1))}`);
    }
    return Number(m[0]);
  }

  private value(): LvmValue {
    this.count();
    if (this.peek() !== '[') return this.scalar();
    this.pos++;
    const arr: LvmValue[] = [];
    if (this.peek() === ']') {
      this.pos++;
      return arr;
    }
    for (;;) {
      if (this.peek() === '[') this.fail('nested arrays are not part of the format');
      this.count();
      arr.push(this.scalar());
      const c = this.peek();
      this.pos++;
      if (c === ']') return arr;
      if (c !== ',') this.fail(`expected , or ] in an array, found ${JSON.stringify(c)}`);
    }
  }

  /** Entries up to `}` (nested) or the end of input (top level). */
  body(depth: number): LvmSection {
    if (depth > MAX_DEPTH) this.fail(`sections nested deeper than ${MAX_DEPTH}`);
    const sec = new LvmSection();
    for (;;) {
      const c = this.peek();
      if (c === '') {
        if (depth > 0) this.fail('unexpected end of text inside a section');
        return sec;
      }
      if (c === '}') {
        if (depth === 0) this.fail('unbalanced }');
        this.pos++;
        return sec;
      }
      const key = this.name();
      if (sec.entries.has(key)) this.fail(`duplicate key ${JSON.stringify(key)}`);
      const op = this.peek();
      this.pos++;
      this.count();
      if (op === '{') sec.entries.set(key, this.body(depth + 1));
      else if (op === '=') sec.entries.set(key, this.value());
      else this.fail(`expected = or { after ${JSON.stringify(key)}`);
    }
  }
}

/** Parse a whole metadata text into its top-level section. */
export function parseLvmText(text: string): LvmSection {
  return new Parser(text).body(0);
}
