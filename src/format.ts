/**
 * Text output for people: aligned tables and compact numbers/rates. Data
 * output (--json) never goes through here, except bigintAsNumber.
 */

export type Align = 'l' | 'r';

/** JSON.stringify replacer for data output (--json, the service's API): counters (bigint) as numbers. */
export const bigintAsNumber = (_k: string, x: unknown) => (typeof x === 'bigint' ? Number(x) : x);

/** Columns separated by two spaces; `align` per column (default left). Trailing spaces trimmed. */
export function table(header: string[], rows: string[][], align: Align[] = []): string[] {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? '').length)));
  return all.map((r) =>
    r
      .map((cell, c) => ((align[c] ?? 'l') === 'r' ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd(),
  );
}

const UNITS = ['', 'k', 'M', 'G', 'T', 'P'];

/** 999 -> "999", 1234 -> "1.23k", 5_600_000 -> "5.60M" (SI, 1000-based). */
export function si(n: number | bigint, unit = ''): string {
  let v = typeof n === 'bigint' ? Number(n) : n;
  if (!Number.isFinite(v)) return String(v);
  const neg = v < 0;
  v = Math.abs(v);
  let i = 0;
  while (v >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i++;
  }
  const s = i === 0 ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2);
  return `${neg ? '-' : ''}${s}${UNITS[i]}${unit}`;
}

/** Per-second rate of a counter delta over `seconds` (0 when the interval is empty or the counter went back). */
export function perSecond(delta: bigint, seconds: number): number {
  if (seconds <= 0 || delta < 0n) return 0;
  return Number(delta) / seconds;
}

/** Clears a terminal screen and homes the cursor (for redrawing in place). */
export const CLEAR_SCREEN = '\x1b[H\x1b[2J';
