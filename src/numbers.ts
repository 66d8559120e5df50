/**
 * Numbers from text (command-line options, JSON fields), bounded before any
 * use: one parser per kind (integers, decimal seconds), each refusing with a
 * UsageError (exit 2) that names the option or field, the value (cut) and
 * the range it must be in. Nothing past the range reaches a BigInt, a timer
 * or a map: a 100,000-digit id, 1e400 or 2^64 is "out of range", never
 * Infinity or a RangeError.
 *
 * The ranges of the CLI's options live here too, so the API (src/flows.ts,
 * src/pairs/) and the CLI (src/cli/options.ts) check the same bounds.
 */
import { UsageError, cutValue } from './errors';

export interface Range {
  min: number;
  max: number;
  /** Unit named after the range in messages ("seconds"). */
  unit?: string;
  /** Integers only: 0x-prefixed hex is accepted too. */
  hex?: boolean;
}

// ---------------------------------------------------------------- ranges

/** A port (pair) id: the key of neuv_ids. */
export const PORT_ID: Range = { min: 0, max: 0xffff };
/** A port id where 0x hex is taken too (trace --pair, as the trace prints ids). */
export const PORT_ID_HEX: Range = { ...PORT_ID, hex: true };
/** A TCP or UDP port. */
export const L4_PORT: Range = { min: 0, max: 0xffff };
/** An IP protocol number. */
export const IP_PROTO: Range = { min: 0, max: 255 };
/** A process id (PID_MAX_LIMIT, include/linux/threads.h). */
export const PID: Range = { min: 1, max: 4194304 };
/** A year, in seconds: the longest flow timeout, trace or wait we take. */
export const YEAR_S = 365 * 24 * 3600;
/** Flow offload --timeout and --idle: a millisecond to a year (the map holds nanoseconds). */
export const FLOW_SECONDS: Range = { min: 0.001, max: YEAR_S, unit: 'seconds' };
/** stats --watch --interval: redraws at most ten times a second. */
export const WATCH_INTERVAL: Range = { min: 0.1, max: 3600, unit: 'seconds' };
/** trace --duration: within one timer of Node (2^31 - 1 ms, 24.8 days), a week. */
export const TRACE_DURATION: Range = { min: 0.1, max: 7 * 24 * 3600, unit: 'seconds' };
/** trace --count. */
export const TRACE_COUNT: Range = { min: 1, max: 1e9, unit: 'records' };

// ---------------------------------------------------------------- parsers

function rangeText(r: Range): string {
  return `${r.min}..${r.max}${r.unit ? ` ${r.unit}` : ''}`;
}

function shown(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(cutValue(v, 64)) : typeof v === 'number' ? String(v) : cutValue(JSON.stringify(v) ?? String(v));
}

function outOfRange(v: unknown, what: string, r: Range): UsageError {
  return new UsageError(`${what} ${shown(v)} is out of range (expected ${rangeText(r)})`);
}

/** Digits without leading zeros, or undefined when they have more than `max` (surely out of any range we use). */
function significant(digits: string, max: number): string | undefined {
  const d = digits.replace(/^0+(?=.)/, '');
  return d.length > max ? undefined : d;
}

/**
 * An integer in r: a number, or a string of decimal digits (0x hex too with
 * r.hex), surrounding blanks ignored. A sign, a fraction, an exponent or
 * anything else is not an integer; a negative one or one past r is out of
 * range (-0 is 0).
 */
export function parseInteger(v: unknown, what: string, r: Range): number {
  const notInt = () => new UsageError(`${what} ${shown(v)} is not an integer (expected ${rangeText(r)})`);
  let n: number;
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw Number.isFinite(v) || Number.isNaN(v) ? notInt() : outOfRange(v, what, r);
    n = v;
  } else if (typeof v === 'string') {
    const t = v.trim();
    if (r.hex && /^0x[0-9a-f]+$/i.test(t)) {
      const d = significant(t.slice(2), 13); // 16^13 < 2^53
      if (d === undefined) throw outOfRange(v, what, r);
      n = parseInt(d, 16);
    } else if (/^-?[0-9]+$/.test(t)) {
      const d = significant(t.replace(/^-/, ''), 15); // 10^15 < 2^53
      if (d === undefined) throw outOfRange(v, what, r);
      n = t.startsWith('-') ? -Number(d) : Number(d);
    } else throw notInt();
  } else throw notInt();
  if (n === 0) n = 0; // -0
  if (n < r.min || n > r.max) throw outOfRange(v, what, r);
  return n;
}

/**
 * A decimal number in r ("0.5", "30", ".25"): a number, or a string of
 * digits with at most one '.', surrounding blanks ignored. No exponent, no
 * hex, no Infinity: bounded by its text before it is a number.
 */
export function parseDecimal(v: unknown, what: string, r: Range): number {
  const notNum = () => new UsageError(`${what} ${shown(v)} is not a decimal number (expected ${rangeText(r)})`);
  let n: number;
  if (typeof v === 'number') {
    if (Number.isNaN(v)) throw notNum();
    n = v;
  } else if (typeof v === 'string') {
    const t = v.trim();
    const m = /^(-?)([0-9]*)(?:\.([0-9]*))?$/.exec(t);
    if (!m || (m[2] === '' && !m[3])) throw notNum();
    const whole = significant(m[2] || '0', 15);
    if (whole === undefined) throw outOfRange(v, what, r);
    // The fraction: 17 digits are all a double holds.
    n = Number(`${whole}.${(m[3] ?? '').slice(0, 17) || '0'}`);
    if (m[1]) n = -n;
  } else throw notNum();
  if (n === 0) n = 0;
  if (!(n >= r.min && n <= r.max)) throw outOfRange(v, what, r);
  return n;
}

/** A port id 0..65535 (a number, or decimal digits). */
export function parsePortId(v: unknown, what = 'port id'): number {
  return parseInteger(v, what, PORT_ID);
}

/** A process id 1..4194304 (decimal digits). */
export function parsePid(v: unknown, what = 'pid'): number {
  return parseInteger(v, what, PID);
}
