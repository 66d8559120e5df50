/** tc's JSON: -json output parsed with repeated keys kept (one "match" per u32 key). */
import { NeuvError } from '../errors';

// ================================================================ tc's JSON

/** Keys `tc -json` repeats inside one object (one "match" per u32 key). */
const REPEATED_KEYS: ReadonlySet<string> = new Set(['match']);

/**
 * Parses a sequence of JSON values (`tc -json -batch` prints one per
 * command). Unlike JSON.parse it keeps repeated keys: a key in `repeated`
 * always comes back as an array of every value it had in its object (an
 * array value is spread into it, for an iproute2 that prints a real array);
 * any other repeated key keeps its last value, as JSON.parse does.
 */
export function parseJsonValues(text: string, repeated: ReadonlySet<string> = REPEATED_KEYS): unknown[] {
  let i = 0;
  const n = text.length;
  const fail = (what: string): never => {
    throw new NeuvError(`cannot parse tc's JSON output at offset ${i}: ${what}`);
  };
  const ws = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      i++;
    }
  };
  const str = (): string => {
    const start = i++;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x5c) i += 2;
      else if (c === 0x22) return JSON.parse(text.slice(start, ++i)) as string;
      else i++;
    }
    return fail('unterminated string');
  };
  const LITERAL = /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
  const value = (): unknown => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o: Record<string, unknown> = {};
      ws();
      if (text[i] === '}') {
        i++;
        return o;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const k = str();
        ws();
        if (text[i] !== ':') fail("expected ':'");
        i++;
        const v = value();
        if (k === '__proto__') {
          /* never a tc key; not assigned */
        } else if (repeated.has(k)) {
          const arr = (Array.isArray(o[k]) ? o[k] : []) as unknown[];
          if (Array.isArray(v)) arr.push(...(v as unknown[]));
          else arr.push(v);
          o[k] = arr;
        } else o[k] = v;
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return o;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      const a: unknown[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return a;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    LITERAL.lastIndex = i;
    const m = LITERAL.exec(text);
    if (!m) return fail(`unexpected ${c === undefined ? 'end of input' : JSON.stringify(c)}`);
    i += m[0].length;
    return JSON.parse(m[0]) as unknown;
  };
  const out: unknown[] = [];
  ws();
  while (i < n) {
    out.push(value());
    ws();
  }
  return out;
}

