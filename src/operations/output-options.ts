/** Parsing -o "key=value,key=value" as qemu-img does (",," is a literal comma). */
import { SparsifyError } from '../io/errors.js';

export function parseOutputOptions(text: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (!text) return out;
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',' && text[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (text[i] === ',') {
      parts.push(cur);
      cur = '';
    } else cur += text[i];
  }
  parts.push(cur);
  for (const p of parts) {
    if (!p) continue;
    const eq = p.indexOf('=');
    if (eq <= 0) throw new SparsifyError(`-o: '${p}' is not of the form key=value`);
    out.set(p.slice(0, eq), p.slice(eq + 1));
  }
  return out;
}
