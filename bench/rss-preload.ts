/**
 * Preloaded with `node -r dist/bench/rss-preload.js ...`: at exit, writes the
 * process's peak resident set (process.resourceUsage().maxRSS, KiB) and
 * VmHWM from /proc/self/status to the file named by NEUV_BENCH_RSS_OUT.
 * Used by the memory figures of bench/control.ts; does nothing without the
 * variable.
 */
import * as fs from 'node:fs';

const out = process.env.NEUV_BENCH_RSS_OUT;
if (out) {
  process.on('exit', () => {
    let hwm: number | undefined;
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
      if (m) hwm = Number(m[1]);
    } catch {
      /* no procfs */
    }
    fs.writeFileSync(out, JSON.stringify({ maxRSS: process.resourceUsage().maxRSS, vmHWM: hwm }));
  });
}
