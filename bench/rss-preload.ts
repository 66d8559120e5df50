/**
 * Preloaded with `node -r dist/bench/rss-preload.js ...`: at exit, writes to
 * the file named by NEUV_BENCH_RSS_OUT the process's peak resident set
 * (process.resourceUsage().maxRSS, KiB, and VmHWM from /proc/self/status),
 * its CPU time (user + system, ms) and that of the children it waited for
 * (cutime + cstime from /proc/self/stat, ms). Used by the control-plane and
 * memory figures of bench/control.ts; does nothing without the variable.
 */
import * as fs from 'node:fs';

/** cutime + cstime of /proc/self/stat in ms (fields 16 and 17; the name in field 2 may hold spaces). */
export function childCpuMs(clkTck = 100): number {
  try {
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[13]) + Number(f[14])) * 1000) / clkTck;
  } catch {
    return 0;
  }
}

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
    const cpu = process.cpuUsage();
    fs.writeFileSync(out, JSON.stringify({ maxRSS: process.resourceUsage().maxRSS, vmHWM: hwm, cpuMs: (cpu.user + cpu.system) / 1000, childCpuMs: childCpuMs() }));
  });
}
