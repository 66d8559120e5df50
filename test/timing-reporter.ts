/**
 * mocha's spec reporter plus, after its summary, each suite file's wall time
 * (its top-level describes from first hook to last, hooks included) and the
 * CPU time mocha and its children (CLI runs, traffic tools, stub DP) used
 * meanwhile, longest first, so CI's budget stays visible:
 *
 *   Suite times, longest first (wall, CPU):
 *     312.4 s   120.3 s  reliability.test.js  (7 passed)
 *      ...
 *    1201.0 s   602.0 s  total, 41 files
 *
 * The CPU column (from /proc/self/stat: user and system time of mocha and of
 * the children it waited for) barely depends on what else the machine runs,
 * unlike the wall time: it tells what a suite costs, and what running suites
 * side by side can save.
 * make test, make vm-test and .ci/run use it (`--reporter dist/test/timing-reporter.js`);
 * .ci/run prints the host's and the VM's tables again at the end of its run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Mocha from 'mocha';

const { EVENT_SUITE_BEGIN, EVENT_SUITE_END, EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING, EVENT_RUN_END } = Mocha.Runner.constants;

interface FileTime {
  ms: number;
  cpuMs: number;
  passed: number;
  failed: number;
  pending: number;
}

const TABLE_TITLE = 'Suite times, longest first (wall, CPU):';

/** CPU time of this process and its waited-for children, in ms (0 where /proc is not there). */
function cpuMs(): number {
  try {
    // The fields after the command name (which may hold spaces): utime is the 12th, then stime, cutime, cstime.
    const f = fs.readFileSync('/proc/self/stat', 'utf8').replace(/^.*\) /s, '').split(' ');
    return f.slice(11, 15).reduce((s, v) => s + Number(v), 0) * 10; // USER_HZ is 100 on Linux
  } catch {
    return 0;
  }
}

/** The table's lines. */
function timeTable(times: Map<string, FileTime>): string[] {
  const rows = [...times.entries()].sort((a, b) => b[1].ms - a[1].ms);
  const secs = (ms: number) => (ms / 1000).toFixed(1).padStart(7);
  const counts = (t: FileTime) => [`${t.passed} passed`, t.failed ? `${t.failed} failed` : '', t.pending ? `${t.pending} pending` : ''].filter(Boolean).join(', ');
  const total = rows.reduce((s, [, t]) => s + t.ms, 0);
  const cpu = rows.reduce((s, [, t]) => s + t.cpuMs, 0);
  return [
    TABLE_TITLE,
    ...rows.map(([f, t]) => `  ${secs(t.ms)} s ${secs(t.cpuMs)} s  ${f}  (${counts(t)})`),
    `  ${secs(total)} s ${secs(cpu)} s  total, ${rows.length} files`,
  ];
}

class TimingReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    const times = new Map<string, FileTime>();
    const began = new Map<Mocha.Suite, { ms: number; cpuMs: number }>();
    const of = (file: string | undefined): FileTime | undefined => {
      if (!file) return undefined;
      const name = path.basename(file);
      let t = times.get(name);
      if (!t) times.set(name, (t = { ms: 0, cpuMs: 0, passed: 0, failed: 0, pending: 0 }));
      return t;
    };
    const topLevel = (s: Mocha.Suite) => s.parent?.root === true;
    runner.on(EVENT_SUITE_BEGIN, (s: Mocha.Suite) => {
      if (topLevel(s)) began.set(s, { ms: Date.now(), cpuMs: cpuMs() });
    });
    runner.on(EVENT_SUITE_END, (s: Mocha.Suite) => {
      const t0 = began.get(s);
      const t = of(s.file);
      if (t0 !== undefined && t) {
        t.ms += Date.now() - t0.ms;
        t.cpuMs += cpuMs() - t0.cpuMs;
      }
    });
    const count = (k: 'passed' | 'failed' | 'pending') => (test: Mocha.Test) => {
      const t = of(test.file);
      if (t) t[k]++;
    };
    runner.on(EVENT_TEST_PASS, count('passed'));
    runner.on(EVENT_TEST_FAIL, count('failed'));
    runner.on(EVENT_TEST_PENDING, count('pending'));
    // After the spec reporter's summary (its listener was added first).
    runner.once(EVENT_RUN_END, () => {
      console.log(['', ...timeTable(times), ''].join('\n'));
    });
  }
}

export = TimingReporter;
