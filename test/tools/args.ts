/**
 * The command line and output of the traffic tools (udpseq.ts, tcpsum.ts):
 * `--name value` options (a flag without a value is "true"), numbers checked,
 * one JSON object a line on stdout.
 */

export function args(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) {
      out[a.slice(2)] = 'true';
      continue;
    }
    out[a.slice(2)] = v;
    i++;
  }
  return out;
}

/** A non-negative number option, or `dflt` when absent (required without one). */
export function num(o: Record<string, string>, k: string, dflt?: number): number {
  const v = o[k];
  if (v === undefined) {
    if (dflt === undefined) throw new Error(`--${k} is required`);
    return dflt;
  }
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${k} ${v} is not a number`);
  return n;
}

export function print(v: unknown): void {
  process.stdout.write(JSON.stringify(v) + '\n');
}
