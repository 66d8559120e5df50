/**
 * Fuzzing (issue 6): random argument vectors and JSON lines fed to the CLI
 * must never crash it (only our typed errors or commander's usage errors,
 * one line each) and a refused command must change nothing.
 *
 * Three layers:
 *  1. the pure parsers (JSON lines, specs, MACs, ids, interface names, modes,
 *     selectors, targets, pin roots, fault points), 10,000+ cases in-process;
 *  2. buildProgram() from src/cli.ts in-process, 2,000 argument vectors
 *     (NEUV_BPF_SOAK=1: 50,000), output stubbed, against a real datapath;
 *  3. 40 real CLI invocations (soak: 1,000) against the same.
 * 2 and 3 run in a sandbox child (this file run by node with --child) in
 * private pid, mount and network namespaces (unshare): a random `--pid N`
 * can only name the sandbox itself, every interface and netns it can reach
 * is a throwaway one, and the pin roots are throwaway ones under /sys/fs/bpf
 * (a guard skips any vector that would reach anything else). The kernel
 * parts run for real: pins, maps, hooks, links. After every refused vector
 * the pins, map entries and hooks must be as they were (and links and qdiscs,
 * checked every 100 vectors); after an accepted one that changed something
 * (a valid `pair del`, `unload`...) the baseline is rebuilt. Planted paths
 * (issue 25) are among the pin roots: a symbolic link to the loaded root, a
 * directory of nobody's, a root whose lock files are symbolic links; what
 * they point at is part of the state that must not change.
 *
 * Reproduce a run: NEUV_BPF_FUZZ_SEED=<seed printed by the test>.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import type { Command } from 'commander';
import { ExitCode, NeuvError } from '../src/errors';
import {
  parsePairLines,
  parsePortId,
  parseWorkloadMac,
  parseModeName,
  validateSpec,
  checkBatch,
  MODES,
  ADD_MODES,
  PairSpec,
} from '../src/pairs';
import { validateIfName } from '../src/link';
import { selectorFrom } from '../src/cli/pair';
import { targetFrom } from '../src/cli/intercept';
import { isLoaded, pinRootFrom, Pins } from '../src/pins';
import { lockDirFiles } from '../src/lock';
import { leakChecks, removeLockFiles, requireKernel, TIME_SCALE } from './helpers';
import { cleanupDepth, collectOutput, onCleanup, runCleanups, runCleanupsTo, uniqueName, waitFor } from '../harness/proc';
import { FAULT_ACTIONS, parseFaults } from '../src/faults';
import { formatMac, isUcmac } from '../src/mac';
import { FLOW_SECONDS, PORT_ID, PORT_ID_HEX, Range, WATCH_INTERVAL, parseDecimal, parseInteger } from '../src/numbers';

const SOAK = process.env.NEUV_BPF_SOAK === '1';
/** The highest exit code of an error class (src/errors.ts). */
const MAX_EXIT = Math.max(...Object.values(ExitCode));
const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'bin', 'neuv-bpf');

// ================================================================ generators (shared)

const MACS = [
  '02:00:00:00:00:09', '02:42:ac:11:00:02', '01:00:5e:00:00:fb', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00', '4e:65:75:56:00:01',
  '33:33:00:00:00:01', '02:00:00:00:00', '02:00:00:00:00:01:02', 'zz:00:00:00:00:01', '02-00-00-00-00-09', '0200.0000.0009', '2:0:0:0:0:9', '02:00:00:00:00:0g',
];
const NAMES = [
  'vin1', 'vex1', 'vin2', 'vex2', 'br0', 'lo', 'vbr-neuv', 'vth-neuv', 'nosuch0', '', ' ', 'a b', 'a/b', 'a:b', '.', '..', '$(reboot)', '`id`', ';ls', 'x|sh',
  'x&&y', '>out', "'", '"', '\\', '\n', '\t', 'abcdefghijklmnop', 'ééééééééé', 'eth0', '-', '--', '-1', '--in',
  // The sandbox's other veth ends (wlN, hN) and lp1/lp2, veth peers of each other; names of 10,000 characters (issue 25).
  'wl1', 'wl2', 'h1', 'h2', 'lp1', 'lp2', 'n'.repeat(10000), 'é'.repeat(10000), '\x1b[2J'.repeat(2000),
];
const NUMS = [
  '0', '1', '7', '100', '65535', '65536', '-1', '1e3', '0x10', '1.5', 'NaN', 'Infinity', '99999999999999999999', ' 5', '', '0.1', '3600', '3601',
  // Past 2^53 and 2^64, exponents, negative zero, too small and too large for a timer, 10,000 digits (issue 25).
  '9007199254740993', '18446744073709551615', '18446744073709551617', '1e400', '1e-9', '2E1', '-0', '-0.0', '0.0', '0.05', '99999999999', '3000000', '1'.repeat(10000), '0.' + '0'.repeat(9999) + '1',
];
/** vin/vex that are veth peers of each other in the sandbox (a pair of them forwards a frame back into itself). */
const LOOPS: Array<[string, string]> = [['lp1', 'lp2'], ['lp2', 'lp1'], ['vin2', 'wl2'], ['wl2', 'vin2'], ['vex2', 'h2']];
const MODES_ANY = ['fwd', 'tap', 'bypass', 'drop', 'none', 'FWD', 'Tap', 'reset', '', 'fwd;tap'];

const macArb = fc.oneof(
  fc.constantFrom(...MACS),
  fc.uint8Array({ minLength: 6, maxLength: 6 }).map((b) => formatMac(b)),
  fc.tuple(fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 0, maxLength: 8 }), fc.constantFrom(':', '-', '', '::')).map(([a, sep]) => a.map((x) => x.toString(16)).join(sep)),
);
const junk = fc.oneof(fc.string({ maxLength: 24 }), fc.string({ unit: 'grapheme', maxLength: 12 }), fc.stringMatching(/^[a-z0-9@+=._-]{0,18}$/));
const anyValue = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...NAMES) },
  { weight: 2, arbitrary: fc.constantFrom(...NUMS) },
  { weight: 2, arbitrary: fc.constantFrom(...MODES_ANY) },
  { weight: 2, arbitrary: macArb },
  { weight: 1, arbitrary: fc.integer({ min: -100, max: 200000 }).map(String) },
  { weight: 3, arbitrary: junk },
);

/** A JSON value as a pair spec field might (not) be. */
const fieldValue = fc.oneof(
  { weight: 4, arbitrary: anyValue },
  { weight: 1, arbitrary: fc.integer({ min: -10, max: 70000 }) },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.boolean() },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 53 + 2, 2 ** 64, -0, 1e308, -1e-300, 65535.5) },
);
const FIELDS = ['in', 'ex', 'mac', 'mode', 'id', 'ipv6ToDp'];
const specObj = fc
  .tuple(
    fc.subarray(FIELDS),
    fc.array(fc.oneof(fc.constantFrom('vlan', 'IN', 'Mac', '__proto__', 'constructor', ''), fc.string({ maxLength: 6 })), { maxLength: 2 }),
    fc.array(fieldValue, { minLength: 10, maxLength: 10 }),
  )
  .map(([keys, extra, vals]) => {
    const o: Record<string, unknown> = {};
    [...keys, ...extra].forEach((k, i) => {
      o[k] = vals[i % vals.length];
    });
    // Often a plausible one, so deeper checks run too.
    if (keys.includes('in') && keys.includes('ex') && vals[9] === null) {
      o.in = 'vin2';
      o.ex = 'vex2';
    }
    return o;
  });
const jsonLine = fc.oneof(
  { weight: 6, arbitrary: specObj.map((o) => JSON.stringify(o)) },
  { weight: 1, arbitrary: fc.json({ maxDepth: 2 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 30 }) },
  { weight: 1, arbitrary: fc.constantFrom('', '   ', '{', '{"in":', '[]', 'null', '{}', '{"in":"vin2","ex":"vex2","mac":"02:00:00:00:00:09"}') },
  // Ports that would loop a frame: veth peers of each other, a vin with its own workload end (issue 25).
  { weight: 1, arbitrary: fc.constantFrom(...LOOPS.map(([a, b]) => JSON.stringify({ in: a, ex: b, mac: '02:00:00:00:00:09' }))) },
);
const jsonLines = fc.tuple(fc.array(jsonLine, { minLength: 0, maxLength: 6 }), fc.constantFrom('\n', '\r\n', '\n\n')).map(([ls, sep]) => ls.join(sep));

function isTyped(e: unknown): e is NeuvError {
  return e instanceof NeuvError;
}

/** Asserts a thrown value is one of our typed errors with a usable one-line message. */
function typedError(e: unknown, ctx: string): void {
  if (!isTyped(e)) throw new Error(`${ctx}: threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.stack ?? String(e)}`);
  const first = e.message.split('\n')[0]!;
  if (first.trim().length < 5) throw new Error(`${ctx}: empty error message ${JSON.stringify(e.message)}`);
  if (e.code < 1 || e.code > MAX_EXIT) throw new Error(`${ctx}: exit code ${e.code}`);
}

// ================================================================ the sandbox child

interface ChildConfig {
  pins: string;
  pins2: string;
  plainDir: string;
  /** An empty directory for the sentinel files (made by the parent, which removes it). */
  sentinel: string;
  /** An empty directory for the JSON-lines inputs (the same). */
  jsonDir: string;
  seed: number;
  runs: number;
  real: number;
  realParallel: number;
}

interface ChildReport {
  cases: number;
  skipped: number;
  codes: Record<string, number>;
  crashes: string[];
  changed: string[];
  /** Changes by refused vectors that are known findings (see KNOWN_CHANGES). */
  known: string[];
  resets: number;
  jsonFiles: number;
  real: { runs: number; codes: Record<string, number>; problems: string[]; timeouts: number };
  ms: { inProcess: number; real: number };
  /** In-process milliseconds per command word, for tuning the weights. */
  msBy: Record<string, number>;
}

async function childMain(cfg: ChildConfig): Promise<void> {
  // Imported here: the parent (mocha) needs none of it.
  /* eslint-disable @typescript-eslint/no-var-requires */
  const { buildProgram } = await import('../src/cli');
  const { CommanderError } = await import('commander');
  const { stopCommandTrace } = await import('../src/trace');
  const bpf = await import('../src/bpf');
  const { TC_HANDLE, TC_PRIORITY } = await import('../src/attach');
  const { configureLogging } = await import('../src/log');
  const { leafCommands } = await import('./helpers');
  const net = await import('../harness/net');
  const { sh } = await import('../harness/proc');
  process.env.NEUV_BPF_PIN_ROOT = cfg.pins; // never the real default pin root
  process.env.NEUV_BPF_LOG_LEVEL = 'error';
  configureLogging('error', false);
  const home = fs.openSync('/proc/thread-self/ns/net', 'r');
  const homeIno = fs.statSync('/proc/thread-self/ns/net').ino;

  // The sandbox network (IPv6 off, up): vinN with its workload end wlN, vexN with its host end hN, a bridge,
  // and lp1/lp2, veth peers of each other (LOOPS: as a pair they loop a frame and are refused, src/pairs/loops.ts).
  // The sandbox's netns has no name: a Netns that runs here.
  sh('ip', ['link', 'set', 'lo', 'up']);
  const here = net.nsHere();
  for (const i of [1, 2]) {
    net.veth({ ns: here, name: `vin${i}` }, { ns: here, name: `wl${i}` }, { ipv6: false });
    net.veth({ ns: here, name: `vex${i}` }, { ns: here, name: `h${i}` }, { ipv6: false });
  }
  net.veth({ ns: here, name: 'lp1' }, { ns: here, name: 'lp2' }, { ipv6: false });
  sh('ip', ['link', 'add', 'br0', 'type', 'bridge']);

  // Sentinels (issue 25): files and directories of every kind that the generator names as --file, --obj,
  // --bpffs, --netns...; no vector may change any of them (nor anything outside the pin roots and /run/neuv-bpf).
  const S = cfg.sentinel;
  fs.writeFileSync(path.join(S, 'file'), '{"in":"vin2","ex":"vex2","mac":"02:00:00:00:00:09"}\n');
  fs.mkdirSync(path.join(S, 'dir'), { mode: 0o755 });
  sh('mkfifo', [path.join(S, 'fifo')]);
  fs.symlinkSync(path.join(S, 'file'), path.join(S, 'link'));
  fs.symlinkSync(path.join(S, 'dir'), path.join(S, 'dirlink'));
  const sentinels = ['file', 'dir', 'fifo', 'link', 'dirlink'].map((n) => path.join(S, n));
  const specials = [...sentinels, '/dev/zero', '/dev/null', '/etc/passwd'];
  const sentinelState = (): string =>
    [S, ...specials, cfg.plainDir, '/etc/hostname'].map((p) => {
      const st = fs.lstatSync(p);
      return `${p} ${st.ino} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeMs} ${st.ctimeMs}${st.isDirectory() ? ` [${fs.readdirSync(p).sort().join(' ')}]` : ''}`;
    }).join('\n');

  // What a local user plants where our paths go (issue 25): a symbolic link as a pin root (to the loaded
  // one), a directory of nobody's, and symbolic links at the lock, wait and trace lock files of a pin root
  // of its own; every vector that names them must be refused and leave what they point at as it was.
  const planted = plantedPaths(cfg);
  fs.symlinkSync(cfg.pins, planted.link);
  fs.mkdirSync(planted.nobody, { mode: 0o755 });
  fs.chownSync(planted.nobody, 65534, 65534);
  const { lockDirFile } = await import('../src/lock');
  const targetFile = path.join(cfg.plainDir, 'planted-target');
  fs.writeFileSync(targetFile, 'precious\n', { mode: 0o644 });
  for (const what of ['lock', 'lock.wait', 'trace.lock']) {
    fs.rmSync(lockDirFile(planted.lockLinks, what), { force: true });
    fs.symlinkSync(targetFile, lockDirFile(planted.lockLinks, what));
  }
  const plantedState = (): string =>
    [planted.link, planted.nobody, targetFile]
      .map((p) => {
        const st = fs.lstatSync(p);
        return `${p} ${st.mode.toString(8)} ${st.uid} ${st.isSymbolicLink() ? fs.readlinkSync(p) : st.isDirectory() ? fs.readdirSync(p).join(',') : fs.readFileSync(p, 'utf8')}`;
      })
      .join('\n');

  // JSON-lines inputs for --file.
  const jdir = cfg.jsonDir;
  const jfiles = fc.sample(jsonLines, { numRuns: 200, seed: cfg.seed }).map((t, i) => {
    const f = path.join(jdir, `p${i}.jsonl`);
    fs.writeFileSync(f, t);
    return f;
  });

  // ---- runner
  const silence = (c: Command, sink: string[]) => {
    c.configureOutput({ writeOut: (s) => sink.push(s), writeErr: (s) => sink.push(s), outputError: () => undefined });
    for (const s of c.commands) silence(s, sink);
  };
  const run = async (argv: string[], sink: string[] = []): Promise<{ code: number; crash?: string; line?: string }> => {
    const program = buildProgram((s) => sink.push(s));
    silence(program, sink);
    // Streaming and topology-building commands: parsed for real, their actions stubbed (they would run until interrupted).
    for (const c of program.commands) if (['demo', 'trace', 'watch', 'serve'].includes(c.name())) c.action(() => undefined);
    try {
      await program.parseAsync(['node', 'neuv-bpf', ...argv]);
      return { code: 0 };
    } catch (e) {
      if (e instanceof CommanderError) {
        return { code: ['commander.helpDisplayed', 'commander.help', 'commander.version'].includes(e.code) ? 0 : 2, line: e.message };
      }
      if (e instanceof NeuvError) {
        const line = e.message.split('\n')[0]!;
        if (e.code < 1 || e.code > MAX_EXIT || line.trim().length < 5) return { code: e.code, crash: `bad error: code ${e.code} message ${JSON.stringify(e.message)}` };
        return { code: e.code, line };
      }
      return { code: -1, crash: `${(e as Error)?.constructor?.name}: ${(e as Error)?.stack ?? String(e)}` };
    } finally {
      stopCommandTrace();
      if (fs.statSync('/proc/thread-self/ns/net').ino !== homeIno) bpf.setns(home, bpf.CLONE_NEWNET, 'home');
      process.exitCode = undefined;
    }
  };

  // ---- state
  const roots = [cfg.pins, cfg.pins2, `${cfg.pins}-other`];
  const mapDump = (pins: string): string => {
    if (!isLoaded(pins)) return 'not loaded';
    const names = ['ports', 'ids', 'stats', 'config'] as const;
    return Pins.with(pins, names, (p) =>
      names
        .map((name) => {
          const rows = p.map(name).entries().map(([k, v]) => (name === 'stats' ? k.toString('hex') : `${k.toString('hex')}=${v.toString('hex')}`)).sort();
          return `${name}: ${rows.join(' ')}`;
        })
        .join('\n'),
    );
  };
  const quick = (): string => {
    const parts: string[] = [];
    for (const p of roots) parts.push(`${p}: ${fs.existsSync(p) ? fs.readdirSync(p).sort().join(' ') : '-'}`, mapDump(p));
    parts.push(`plain: ${fs.readdirSync(cfg.plainDir).join(' ')}`, plantedState(), sentinelState());
    const devs = fs.readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2).map((l) => l.split(':')[0]!.trim()).filter(Boolean).sort();
    for (const d of devs) {
      const idx = bpf.ifNameToIndex(d);
      parts.push(`${d} ${idx} ${idx ? bpf.tcQuery(idx, TC_HANDLE, TC_PRIORITY) ? 'hooked' : '-' : '?'}`);
    }
    return parts.join('\n');
  };
  const full = (): string => {
    const links = (JSON.parse(sh('ip', ['-j', 'link', 'show'])) as Array<{ ifname: string; ifindex: number; address?: string; mtu: number; flags: string[] }>)
      // Admin state only: carrier (LOWER_UP, NO-CARRIER) settles by itself after a veth is created.
      .map((l) => `${l.ifindex} ${l.ifname} ${l.address} ${l.mtu} ${l.flags.includes('UP') ? 'up' : 'down'}`);
    return `${links.join('\n')}\n${sh('tc', ['qdisc', 'show'])}\n${quick()}`;
  };
  const baseline = async (): Promise<void> => {
    for (const p of roots) {
      if (fs.existsSync(p)) {
        // --force: the baseline's pair 100 (and any pair a vector added) would make a plain unload refuse.
        const r = await run(['--bpffs', p, 'unload', '--force']);
        if (r.code !== 0) throw new Error(`reset: unload ${p}: ${r.line ?? r.crash}`);
      }
    }
    const mustOk = async (argv: string[]) => {
      const r = await run(argv);
      if (r.code !== 0) throw new Error(`reset: ${argv.join(' ')}: ${r.line ?? r.crash}`);
    };
    await mustOk(['--bpffs', cfg.pins, 'load']);
    await mustOk(['--bpffs', cfg.pins, 'pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', '02:00:00:00:00:01', '--id', '100', '--mode', 'tap']);
  };

  /** Puts the baseline back after an accepted change: cheap steps first, a full rebuild if they are not enough. */
  const restore = async (q0: string): Promise<'cheap' | 'full'> => {
    for (const p of roots.slice(1)) {
      if (!fs.existsSync(p)) continue;
      if (fs.readdirSync(p).length === 0) fs.rmdirSync(p); // an empty leftover: unload would take vbr-neuv for its own
      else await run(['--bpffs', p, 'unload', '--force']);
    }
    if (isLoaded(cfg.pins)) {
      const sink: string[] = [];
      if ((await run(['--bpffs', cfg.pins, 'show', '--json'], sink)).code === 0) {
        const shown = JSON.parse(sink.join('')) as { pairs: Array<{ id: number }> };
        for (const pr of shown.pairs) if (pr.id !== 100) await run(['--bpffs', cfg.pins, 'pair', 'del', '--id', String(pr.id)]);
        await run(['--bpffs', cfg.pins, 'pair', 'mode', '--id', '100', 'tap']);
        await run(['--bpffs', cfg.pins, 'repair']);
        if (quick() === q0) return 'cheap';
      }
    }
    await baseline();
    return 'full';
  };

  // ---- generators that know the CLI
  const cmds = leafCommands(buildProgram(() => undefined));
  const opts = new Map<string, boolean>(); // --long -> takes a value
  const collect = (c: Command) => {
    for (const o of c.options) if (o.long && o.long !== '--watch') opts.set(o.long, o.required || o.optional);
    c.commands.forEach(collect);
  };
  collect(buildProgram(() => undefined));
  const optNames = [...opts.keys()];
  const pinValues = [cfg.pins, cfg.pins2, cfg.plainDir, path.join(cfg.plainDir, 'pins'), 'relative/pins', '/nonexistent/pins', '', `${cfg.pins}-other`, ...plantedRoots(cfg)];
  const value = (name: string) => {
    switch (name) {
      case '--bpffs':
        return fc.constantFrom(...pinValues, ...sentinels);
      case '--file':
      case '--from':
        return fc.oneof(fc.constantFrom(...jfiles), fc.constantFrom('-', '/nonexistent/x.jsonl', cfg.plainDir, '/proc/self/status', ...specials));
      case '--obj':
        return fc.constantFrom(path.join(ROOT, 'build', 'fixtures', 'reject.bpf.o'), path.join(ROOT, 'build', 'fixtures', 'drift.bpf.o'), '/nonexistent.o', '/etc/hostname', cfg.plainDir, ...specials);
      case '--netns':
      case '--container-netns':
        return fc.constantFrom('/proc/self/ns/net', '/proc/1/ns/net', 'nbt-fuzz-nosuch', '/nonexistent/ns', 'a b', '', '.', '..', 'x;y', '/proc/self/ns/mnt', ...specials);
      case '--pid':
        return fc.oneof(fc.constantFrom('1', '0', '-1', '999999999', 'abc', '1.5', '', '4194305'), fc.integer({ min: 2, max: 5000000 }).map(String));
      case '--mac':
        return macArb;
      case '--log-level':
        return fc.constantFrom('trace', 'debug', 'info', 'warn', 'error', 'loud', '');
      case '--mode':
        return fc.constantFrom(...MODES_ANY);
      default:
        return anyValue;
    }
  };
  const pairOf = (n: string): fc.Arbitrary<string[]> => (opts.get(n) ? value(n).map((v): string[] => [n, v]) : fc.constant([n]));
  const optArb: fc.Arbitrary<string[]> = fc.constantFrom(...optNames).chain(pairOf);
  const cmdWeighted = fc.oneof(
    // load runs the verifier (~0.1-0.3 s) and unload forces a rebuild: rarer than the rest.
    { weight: 1, arbitrary: fc.constantFrom(...cmds.filter((c) => ['load', 'unload'].includes(c.path[0]!))) },
    { weight: 40, arbitrary: fc.constantFrom(...cmds.filter((c) => !['load', 'unload'].includes(c.path[0]!))) },
  );
  // Structured: a command with its own options (fuzzed values) and arguments; random: any tokens.
  const structured = cmdWeighted.chain(({ path: p, cmd }) => {
    const own = cmd.options.filter((o) => o.long && o.long !== '--watch');
    const ownArb: fc.Arbitrary<string[][]> = own.length
      ? fc.subarray(own).chain((os2) => fc.tuple(...os2.map((o): fc.Arbitrary<string[]> => (o.required || o.optional ? value(o.long!).map((v): string[] => [o.long!, v]) : fc.constant([o.long!])))))
      : fc.constant([]);
    const args: fc.Arbitrary<string[]> = fc.array(fc.oneof(fc.constantFrom<string>(...MODES), anyValue), { maxLength: cmd.registeredArguments.length + 1 });
    const globals = fc.array(optArb.filter((x) => ['--bpffs', '--log-level', '--json', '--netns'].includes(x[0]!)), { maxLength: 2 });
    return fc.tuple(globals, ownArb, args).map(([g, o, a]): string[] => [...g.flat(), ...p, ...o.flat(), ...a]);
  });
  const tokens: fc.Arbitrary<string[]> = fc
    .array(fc.oneof({ weight: 3, arbitrary: optArb }, { weight: 3, arbitrary: anyValue.map((v): string[] => [v]) }, { weight: 1, arbitrary: fc.constantFrom(...cmds.map((c) => c.path)) }), { maxLength: 10 })
    .map((t) => t.flat());
  // Shapes of issue 25 that random options rarely meet: a pair of ports that loop a frame, a special file as input,
  // a hostile number on each numeric option of a command that takes it.
  const numericOpts = [
    ['flow', 'allow', '--id', '100', '--proto', 'udp', '--src', '10.0.0.1:1', '--dst', '10.0.0.2:2', '--timeout'],
    ['flow', 'deny', '--id', '100', '--proto', 'udp', '--src', '10.0.0.1:1', '--dst', '10.0.0.2:2', '--idle'],
    ['trace', '--count', '1', '--duration'], ['trace', '--pair'], ['trace', '--count'], ['stats', '--interval'], ['pair', 'del', '--id'], ['flow', 'list', '--id'],
    ['intercept', '--pid'], ['load', '--flows'], ['watch', '--dp', 'local', '--interval'],
  ];
  const shapes: fc.Arbitrary<string[]> = fc.oneof(
    fc.tuple(fc.constantFrom(...LOOPS), macArb, fc.constantFrom<string[]>([], ['--mode', 'fwd'], ['--id', '7'])).map(([[a, b], m, extra]) => ['pair', 'add', '--in', a, '--ex', b, '--mac', m, ...extra]),
    fc.tuple(fc.constantFrom(['pair', 'add', '--file'], ['adopt', '--from'], ['load', '--obj']), fc.constantFrom(...specials)).map(([c, f]) => [...c, f]),
    fc.tuple(fc.constantFrom(...numericOpts), fc.constantFrom(...NUMS)).map(([c, n]) => [...c, n]),
  );
  const argvArb: fc.Arbitrary<string[]> = fc.oneof({ weight: 3, arbitrary: structured }, { weight: 2, arbitrary: tokens }, { weight: 1, arbitrary: shapes });

  /** Vectors that could reach outside the sandbox are skipped (never run). */
  const unsafe = (argv: string[]): boolean => {
    const valueOf = (i: number, name: string): string | undefined => {
      const a = argv[i]!;
      if (a === name) return argv[i + 1];
      if (a.startsWith(name + '=')) return a.slice(name.length + 1);
      return undefined;
    };
    for (let i = 0; i < argv.length; i++) {
      const b = valueOf(i, '--bpffs');
      if (b !== undefined && b.startsWith('/') && path.normalize(b).startsWith('/sys/fs/bpf') && ![cfg.pins, cfg.pins2, `${cfg.pins}-other`, ...plantedRoots(cfg)].includes(path.normalize(b).replace(/\/+$/, ''))) return true;
      for (const n of ['--netns', '--container-netns']) {
        const v = valueOf(i, n);
        if (v === undefined || v === '') continue;
        if (!v.includes('/') && (!/^[A-Za-z0-9_.-]{1,64}$/.test(v) || v === '.' || v === '..')) continue; // refused by name, never opened
        const p = v.includes('/') ? v : `/var/run/netns/${v}`;
        // Not a network namespace (refused before setns), or the sandbox's own: safe.
        if (fs.existsSync(p) && !['/proc/self/ns/net', '/proc/1/ns/net', '/proc/self/ns/mnt', ...specials].includes(v)) return true;
      }
      // demo builds topologies; serve runs until a signal, loads, and creates a socket wherever --socket says.
      if (argv[i] === 'demo' || argv[i] === 'serve') return true;
    }
    return false;
  };

  // ---- in-process
  const report: ChildReport = { cases: 0, skipped: 0, codes: {}, crashes: [], changed: [], known: [], resets: 0, jsonFiles: jfiles.length, real: { runs: 0, codes: {}, problems: [], timeouts: 0 }, ms: { inProcess: 0, real: 0 }, msBy: {} };
  process.on('unhandledRejection', (e) => report.crashes.push(`unhandled rejection: ${(e as Error)?.stack ?? String(e)}`));
  await baseline();
  let q0 = quick();
  let f0 = full();
  const t0 = Date.now();
  const vectors = fc.sample(argvArb, { numRuns: cfg.runs, seed: cfg.seed });
  let lastFull = 0;
  for (const [i, argv] of vectors.entries()) {
    if (unsafe(argv)) {
      report.skipped++;
      continue;
    }
    report.cases++;
    const tc = Date.now();
    const r = await run(argv);
    const word = argv.find((a) => cmds.some((c) => c.path[0] === a)) ?? '(none)';
    report.msBy[word] = (report.msBy[word] ?? 0) + Date.now() - tc;
    report.codes[r.code] = (report.codes[r.code] ?? 0) + 1;
    if (r.crash) report.crashes.push(`${JSON.stringify(argv)}: ${r.crash}`);
    const q = quick();
    if (q !== q0) {
      const d = diff(q0, q);
      const k = knownChange(argv, r.code, d);
      if (k) report.known.push(`${k}: ${JSON.stringify(argv)}`);
      else if (r.code !== 0) report.changed.push(`${JSON.stringify(argv)} (exit ${r.code}: ${r.line}) changed:\n${d}`);
      if ((await restore(q0)) === 'full') {
        report.resets++;
        q0 = quick();
        f0 = full();
        lastFull = i;
      }
    } else if (argv.includes('load')) {
      // load changes links (vbr-neuv): checked at once, so a change is pinned on its vector.
      const f = full();
      if (f !== f0) {
        const d = diff(f0, f);
        const k = knownChange(argv, r.code, d);
        if (k) report.known.push(`${k}: ${JSON.stringify(argv)}`);
        else if (r.code !== 0) report.changed.push(`${JSON.stringify(argv)} (exit ${r.code}: ${r.line}) changed links or qdiscs:\n${d}`);
        await baseline();
        report.resets++;
        q0 = quick();
        f0 = full();
      }
      lastFull = i;
    } else if (i - lastFull >= 100 || i === vectors.length - 1) {
      const f = full();
      if (f !== f0) {
        report.changed.push(`one of vectors ${lastFull + 1}..${i} changed links or qdiscs:\n${diff(f0, f)}\n${vectors.slice(lastFull + 1, i + 1).map((v) => JSON.stringify(v)).join('\n')}`);
        await baseline();
        q0 = quick();
        f0 = full();
      }
      lastFull = i;
    }
    if (report.crashes.length + report.changed.length > 20) break;
  }
  report.ms.inProcess = Date.now() - t0;

  // ---- real CLI invocations (the same generator, another seed), a few at a time
  const t1 = Date.now();
  // A trace runs until interrupted unless told otherwise: give every one a short --duration (appended: the last one wins).
  const realVectors = fc
    .sample(argvArb, { numRuns: cfg.real * 2, seed: cfg.seed + 1 })
    .filter((v) => !unsafe(v))
    .slice(0, cfg.real)
    .map((v) => (v.includes('trace') ? [...v, '--duration', '0.5'] : v));
  const spawnCli = (argv: string[]) =>
    new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; timedOut: boolean }>((resolve) => {
      const c = spawn(process.execPath, [CLI, ...argv], { env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let timedOut = false;
      // trace streams until interrupted: a vector may ask for that.
      const timer = setTimeout(() => {
        timedOut = true;
        c.kill('SIGKILL');
      }, 15000);
      void collectOutput(c).done.then((r) => {
        clearTimeout(timer);
        resolve({ ...r, timedOut });
      });
    });
  for (let i = 0; i < realVectors.length; i += cfg.realParallel) {
    const batch = realVectors.slice(i, i + cfg.realParallel);
    const rs = await Promise.all(batch.map(spawnCli));
    let anyOk = false;
    rs.forEach((r, k) => {
      report.real.runs++;
      const key = r.timedOut ? 'timeout' : String(r.code ?? r.signal);
      report.real.codes[key] = (report.real.codes[key] ?? 0) + 1;
      const argv = JSON.stringify(batch[k]);
      if (r.timedOut) {
        report.real.timeouts++;
        // trace and watch run until interrupted: still running is what they do.
        if (!batch[k]!.includes('trace') && !batch[k]!.includes('watch')) report.real.problems.push(`${argv}: still running after 15 s`);
        anyOk = true;
        return;
      }
      if (r.code === 0) {
        anyOk = true;
        return;
      }
      if (r.code === null || r.code < 1 || r.code > MAX_EXIT) {
        report.real.problems.push(`${argv}: exit ${r.code ?? r.signal}: ${r.stderr.slice(0, 500)}`);
        return;
      }
      // Log lines (JSON, when a vector asked for --log-level info or lower) are not the error line.
      const lines = r.stderr.trim().split('\n').filter((l) => l && !l.startsWith('{"level":'));
      const verifier = lines.length > 1 && /^verifier log of /.test(lines[1]!);
      // The error line: "neuv-bpf: ..." or, with --json as a word before any "--", {"error", "code"} with the exit
      // code; at most 1,000 bytes; never a stack trace.
      const args = batch[k]!;
      const json = args.slice(0, args.includes('--') ? args.indexOf('--') : undefined).includes('--json');
      const first = lines[0] ?? '';
      const jsonError = (l: string): boolean => {
        try {
          const o = JSON.parse(l) as { error?: unknown; code?: unknown };
          return typeof o.error === 'string' && o.error.length > 0 && o.code === r.code;
        } catch {
          return false;
        }
      };
      const form = json ? jsonError(first) : /^neuv-bpf: \S/.test(first);
      if ((lines.length !== 1 && !(verifier && !json)) || !form) report.real.problems.push(`${argv}: exit ${r.code} with stderr ${JSON.stringify(r.stderr.slice(0, 500))}`);
      if (Buffer.byteLength(first) > 1000) report.real.problems.push(`${argv}: an error line of ${Buffer.byteLength(first)} bytes (at most 1,000)`);
      if (/\n\s+at .*:\d+:\d+\)?$/m.test(r.stderr)) report.real.problems.push(`${argv}: a stack trace on stderr`);
      if (r.stdout !== '' && !/--help|-h\b/.test(argv)) report.real.problems.push(`${argv}: exit ${r.code} but printed ${JSON.stringify(r.stdout.slice(0, 200))}`);
    });
    const q = quick();
    if (q !== q0) {
      if (!anyOk) report.real.problems.push(`${JSON.stringify(batch)} all failed but changed:\n${diff(q0, q)}`);
      if ((await restore(q0)) === 'full') {
        q0 = quick();
        f0 = full();
      }
    }
  }
  const f = full();
  if (f !== f0 && quick() === q0) report.real.problems.push(`the real invocations changed links or qdiscs:\n${diff(f0, f)}`);
  report.ms.real = Date.now() - t1;

  for (const p of roots) if (fs.existsSync(p)) await run(['--bpffs', p, 'unload', '--force']);
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(0);
}

/** The planted paths of a run (made by the sandbox child, removed by the parent). */
function plantedPaths(cfg: Pick<ChildConfig, 'pins'>): { link: string; nobody: string; lockLinks: string } {
  return { link: `${cfg.pins}-link`, nobody: `${cfg.pins}-nobody`, lockLinks: `${cfg.pins}-locklinks` };
}

/**
 * The planted paths a vector may name as --bpffs: the link, nobody's directory, the root with planted lock
 * files. (A pin as --bpffs is test/paths.test.ts's: here the loaded root is unloaded and made again, and a
 * load naming its neuv_ports in between would make a directory there.)
 */
function plantedRoots(cfg: Pick<ChildConfig, 'pins'>): string[] {
  const p = plantedPaths(cfg);
  return [p.link, p.nobody, p.lockLinks];
}

type SandboxConfig = Omit<ChildConfig, 'seed' | 'runs' | 'real' | 'realParallel'>;

/**
 * A sandbox's paths, all named by the parent before the child starts: the
 * pin roots under /sys/fs/bpf (with a prefix of this process's uniqueName),
 * the directories of plain paths, sentinels and JSON inputs. The child
 * fills them; only the parent removes them (removeSandbox).
 */
function makeSandbox(uniqueName: (prefix: string) => string): SandboxConfig {
  const pins = `/sys/fs/bpf/${uniqueName('nbtfz')}`;
  const dir = (what: string) => fs.mkdtempSync(path.join(os.tmpdir(), `nbt-fuzz-${what}-`));
  return { pins, pins2: `${pins}-2`, plainDir: dir('plain'), sentinel: dir('sentinel'), jsonDir: dir('json') };
}

/** What a sandbox can leave outside its namespaces: its paths (planted ones too) and the pin roots whose files under /run/neuv-bpf it may have made. */
function sandboxLeftovers(cfg: SandboxConfig): { paths: string[]; lockRoots: string[] } {
  const planted = plantedPaths(cfg);
  const sentinelRoots = ['file', 'dir', 'fifo', 'link', 'dirlink'].map((n) => path.join(cfg.sentinel, n));
  const roots = [cfg.pins, cfg.pins2, `${cfg.pins}-other`];
  return {
    paths: [...roots, planted.link, planted.nobody, planted.lockLinks, cfg.plainDir, cfg.sentinel, cfg.jsonDir],
    lockRoots: [...roots, cfg.plainDir, path.join(cfg.plainDir, 'pins'), planted.lockLinks, planted.link, planted.nobody, ...sentinelRoots],
  };
}

/** Pids of the direct children of pid (read before it is killed: they are reparented after). */
function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Whether a process is gone (or a zombie: it holds nothing more). */
function gone(pid: number): boolean {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

interface SandboxRun {
  /** Kills the child now and waits (synchronously, up to 10 s) until its pid namespace is empty. */
  kill(): void;
  done: Promise<{ code: number | null; out: string; err: string; timedOut: boolean }>;
}

/**
 * Starts the sandbox child on cfg, killed at limitMs if it has not ended
 * (0: no deadline). Registers with the cleanup stack, so runCleanups() (the
 * test's finally, the suite's leakChecks after mocha's own timeout) undoes it
 * in this order: the child killed and waited for, then every path of the
 * sandbox and its files under /run/neuv-bpf removed. Waiting first matters: a
 * child dying part way (a load, a pair add) could otherwise make a pin or a
 * lock file after its directory was removed.
 */
function runSandbox(cfg: ChildConfig, limitMs: number, h: { onCleanup: (fn: () => void, what?: string) => void; removeLockFiles: (...roots: string[]) => void }): SandboxRun {
  const left = sandboxLeftovers(cfg);
  h.onCleanup(() => {
    for (const p of left.paths) fs.rmSync(p, { recursive: true, force: true });
    h.removeLockFiles(...left.lockRoots);
  }, 'the fuzz sandbox');
  // The child dies with us: setpriv --pdeathsig SIGKILLs unshare when this process goes, and unshare's
  // --kill-child then SIGKILLs the child (pid 1 of its pid namespace, so all below it).
  const sandbox = ['unshare', '--pid', '--kill-child', '--mount-proc', '--net', '--', process.execPath, __filename, '--child', JSON.stringify(cfg)];
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...sandbox], { stdio: ['ignore', 'pipe', 'pipe'] });
  const kill = (): void => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const inner = childrenOf(child.pid!); // pid 1 of the sandbox: gone only once every process in it is
    child.kill('SIGKILL');
    for (const p of inner) process.kill(p, 'SIGKILL');
    const end = Date.now() + 10000;
    while (!inner.every(gone) && Date.now() < end) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  };
  h.onCleanup(kill, 'the fuzz child');
  let timedOut = false;
  if (limitMs > 0) {
    const deadline = setTimeout(() => {
      timedOut = true;
      kill();
    }, limitMs);
    h.onCleanup(() => clearTimeout(deadline));
  }
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-20000)));
  return { kill, done: new Promise((resolve) => child.on('close', (code) => resolve({ code, out, err, timedOut }))) };
}

/**
 * Changes by refused commands that are known findings, reported to their
 * owners (docs/reliability.md, Known gaps): `load --jumbo` refused after vbr-neuv's MTU
 * was raised does not put the MTU back (ensureDpPair's MTU change has no
 * undo); a load refused by BpfObject.open (not an object file) leaves the pin
 * root directory it created (the open is outside the undo's try).
 */
function knownChange(argv: string[], code: number, d: string): string | undefined {
  const lines = d.split('\n').filter(Boolean);
  const mtuOnly = lines.length > 0 && lines.every((l) => /^[-+] 1000000[01] v(br|th)-neuv \S+ (2048|9000) /.test(l));
  if (code !== 0 && argv.includes('--jumbo') && mtuOnly) return 'a refused load --jumbo left vbr-neuv/vth-neuv at MTU 9000';
  const emptyRoot = lines.length === 2 && /^- \/sys\/fs\/bpf\/\S+: -$/.test(lines[0]!) && /^\+ \/sys\/fs\/bpf\/\S+: $/.test(lines[1]!);
  if (code !== 0 && argv.includes('load') && emptyRoot) return 'a load refused when opening the object left its new, empty pin root directory';
  return undefined;
}

function diff(a: string, b: string): string {
  const A = new Set(a.split('\n'));
  const B = new Set(b.split('\n'));
  return [...[...A].filter((x) => !B.has(x)).map((x) => `- ${x}`), ...[...B].filter((x) => !A.has(x)).map((x) => `+ ${x}`)].slice(0, 20).join('\n');
}

// ================================================================ mocha

if (require.main === module) {
  const i = process.argv.indexOf('--child');
  if (i < 0) {
    process.stderr.write('usage: node fuzz.test.js --child <json config> (run by the fuzz suite)\n');
    process.exit(2);
  }
  childMain(JSON.parse(process.argv[i + 1]!) as ChildConfig).catch((e) => {
    process.stderr.write(`fuzz child: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
} else {
  const seed = Number(process.env.NEUV_BPF_FUZZ_SEED ?? Date.now() % 2147483647);

  describe('fuzz: the pure parsers', function () {
    this.timeout(120000);
    const params = (n: number) => ({ numRuns: SOAK ? n * 10 : n, seed, endOnFailure: true });

    it(`JSON lines (pair add --file): a list of valid specs, or one typed error naming the line (3,000 inputs, seed ${seed})`, function () {
      fc.assert(
        fc.property(jsonLines, (text) => {
          try {
            const r = parsePairLines(text, 'stdin');
            assert.ok(r.specs.length > 0 && r.specs.length === r.labels.length);
            for (const [k, s] of r.specs.entries()) {
              const v = validateSpec(s, r.labels[k]);
              assert.ok(!(v.mac[0]! & 1) && !v.mac.every((b) => b === 0) && !isUcmac(v.mac));
              assert.ok(Buffer.byteLength(v.in) <= 15 && Buffer.byteLength(v.ex) <= 15 && v.in !== v.ex);
            }
          } catch (e) {
            typedError(e, `parsePairLines(${JSON.stringify(text)})`);
            assert.match((e as Error).message, /^stdin/, 'names the input');
          }
        }),
        params(3000),
      );
    });

    it('pair specs (the API): valid or a typed error (2,000)', function () {
      fc.assert(
        fc.property(fc.oneof(specObj, fieldValue), (o) => {
          try {
            const v = validateSpec(o as unknown as PairSpec);
            checkBatch([v], ['x']);
            assert.ok(v.id === undefined || (Number.isInteger(v.id) && v.id >= 0 && v.id <= 0xffff));
            assert.ok(v.mode === undefined || [1, 2, 3].includes(v.mode));
          } catch (e) {
            typedError(e, `validateSpec(${JSON.stringify(o)})`);
          }
        }),
        params(2000),
      );
    });

    it('workload MACs: a unicast, non-zero, non-UCMAC 6-byte address, or a usage error (2,000)', function () {
      fc.assert(
        fc.property(fc.oneof(macArb, junk, fc.constant(undefined), fc.integer()), (s) => {
          try {
            const m = parseWorkloadMac(s);
            assert.equal(m.length, 6);
            assert.ok(!(m[0]! & 1) && !m.every((b) => b === 0) && !isUcmac(m));
          } catch (e) {
            typedError(e, `parseWorkloadMac(${JSON.stringify(s)})`);
            assert.equal((e as NeuvError).code, 2);
          }
        }),
        params(2000),
      );
    });

    it('port ids, modes, selectors: in range or a usage error (2,000)', function () {
      fc.assert(
        fc.property(fieldValue, anyValue, fc.record({ in: fc.option(anyValue, { nil: undefined }), ex: fc.option(anyValue, { nil: undefined }), id: fc.option(anyValue, { nil: undefined }) }), (v, m, sel) => {
          try {
            const n = parsePortId(v);
            assert.ok(Number.isInteger(n) && n >= 0 && n <= 0xffff);
          } catch (e) {
            typedError(e, `parsePortId(${JSON.stringify(v)})`);
          }
          try {
            assert.ok([1, 2, 3, 4].includes(parseModeName(m, MODES)));
            assert.ok([1, 2, 3].includes(parseModeName(m, ADD_MODES)) || !(ADD_MODES as readonly string[]).includes(m.toLowerCase()));
          } catch (e) {
            typedError(e, `parseModeName(${JSON.stringify(m)})`);
          }
          try {
            const s = selectorFrom(sel);
            assert.equal(Object.keys(s).length, 1);
          } catch (e) {
            typedError(e, `selectorFrom(${JSON.stringify(sel)})`);
          }
        }),
        params(2000),
      );
    });

    it('interface names: at most 15 bytes of [A-Za-z0-9_.@+=-], not . or .., or a usage error (2,000)', function () {
      fc.assert(
        fc.property(fc.oneof(fc.constantFrom(...NAMES), junk, fc.string({ unit: 'binary', maxLength: 20 })), (n) => {
          try {
            const v = validateIfName(n);
            assert.ok(Buffer.byteLength(v) <= 15 && /^[A-Za-z0-9_.@+=-]+$/.test(v) && v !== '.' && v !== '..');
          } catch (e) {
            typedError(e, `validateIfName(${JSON.stringify(n)})`);
            assert.ok(!(e as Error).message.includes('\n') || n.includes('\n'), 'one line');
          }
        }),
        params(2000),
      );
    });

    it('numbers (issue 25): in range, or a usage error of one short line naming the option (3,000)', function () {
      const kinds: Array<[string, (v: unknown) => number, Range]> = [
        ['--id', (v) => parseInteger(v, '--id', PORT_ID), PORT_ID],
        ['--pair', (v) => parseInteger(v, '--pair', PORT_ID_HEX), PORT_ID_HEX],
        ['--timeout', (v) => parseDecimal(v, '--timeout', FLOW_SECONDS), FLOW_SECONDS],
        ['--interval', (v) => parseDecimal(v, '--interval', WATCH_INTERVAL), WATCH_INTERVAL],
      ];
      const num = fc.oneof(
        fc.constantFrom(...NUMS),
        fc.bigInt().map(String),
        fc.double().map(String),
        fc.double(),
        fc.integer().map((n) => `0x${n.toString(16)}`),
        fc.stringMatching(/^[-+0-9.eExX ]{0,30}$/),
        fc.string({ maxLength: 12 }),
      );
      fc.assert(
        fc.property(num, (v) => {
          for (const [what, parse, r] of kinds) {
            try {
              const n = parse(v);
              assert.ok(Number.isFinite(n) && n >= r.min && n <= r.max && !Object.is(n, -0), `${what} ${String(v)} -> ${n}`);
            } catch (e) {
              typedError(e, `${what} ${JSON.stringify(v)}`);
              assert.equal((e as NeuvError).code, 2);
              assert.ok((e as Error).message.startsWith(`${what} `) && (e as Error).message.length < 200 && !(e as Error).message.includes('\n'), (e as Error).message);
            }
          }
        }),
        params(3000),
      );
    });

    it('intercept targets, pin roots, fault points: parsed or a usage error (1,500)', function () {
      fc.assert(
        fc.property(fc.option(anyValue, { nil: undefined }), fc.option(anyValue, { nil: undefined }), fc.oneof(anyValue, fc.constantFrom('/sys/fs/bpf/x', '/sys/fs/bpf/x/', '//a//b/')), junk, (pid, ns, pin, crash) => {
          try {
            const t = targetFrom({ pid, containerNetns: ns });
            assert.ok('pid' in t ? Number.isInteger(t.pid) && t.pid > 0 : typeof t.netns === 'string');
          } catch (e) {
            typedError(e, `targetFrom(${JSON.stringify([pid, ns])})`);
          }
          try {
            const p = pinRootFrom(pin, {});
            assert.ok(path.isAbsolute(p) && !p.endsWith('/') || p === '');
          } catch (e) {
            typedError(e, `pinRootFrom(${JSON.stringify(pin)})`);
          }
          for (const f of parseFaults(crash)) assert.ok(FAULT_ACTIONS.includes(f.action) && f.point.length > 0 && Number.isInteger(f.hit) && f.hit >= 1);
        }),
        params(1500),
      );
    });
  });

  describe('fuzz: the CLI (kernel, sandboxed)', function () {
    // NEUV_BPF_FUZZ_RUNS / NEUV_BPF_FUZZ_REAL override the counts (a quick look, a long hunt).
    // make test: 2,000 and 40 (about 60 s of CPU on a quiet machine; CI's budget is its CPU), soak: 50,000 and 1,000.
    const runs = Number(process.env.NEUV_BPF_FUZZ_RUNS ?? (SOAK ? 50000 : 2000));
    const real = Number(process.env.NEUV_BPF_FUZZ_REAL ?? (SOAK ? 1000 : 40));
    before(function () {
      requireKernel(this);
      for (const tool of ['unshare', 'setpriv']) if (spawnSync(tool, ['--version']).status !== 0) throw new Error(`${tool} (util-linux) is needed for the fuzz sandbox`);
    });
    // After mocha's own timeout too: the sandbox's child killed, its paths removed (runSandbox's cleanups).
    leakChecks();

    it('a child killed part way (as by the deadline) leaves nothing of its sandbox behind: pin roots, planted links, directories, lock files', async function () {
      this.timeout(120000 * TIME_SCALE);
      const depth = cleanupDepth();
      const cfg: ChildConfig = { ...makeSandbox(uniqueName), seed, runs: 1e6, real: 0, realParallel: 1 };
      const left = sandboxLeftovers(cfg);
      const sb = runSandbox(cfg, 0, { onCleanup, removeLockFiles });
      let ended = false;
      void sb.done.then(() => (ended = true));
      // At work: the baseline loaded, the planted paths and their lock-file links made, vectors running.
      await waitFor('the sandbox child at work', () => {
        if (ended) throw new Error('the fuzz child ended before it was at work');
        return isLoaded(cfg.pins) && lockDirFiles(plantedPaths(cfg).lockLinks).length > 0;
      }, 60000 * TIME_SCALE);
      await new Promise((r) => setTimeout(r, 300));
      sb.kill();
      assert.equal((await sb.done).code, null, 'killed, not ended');
      runCleanupsTo(depth);
      const exists = (p: string) => {
        try {
          fs.lstatSync(p);
          return true;
        } catch {
          return false;
        }
      };
      assert.deepEqual(left.paths.filter(exists), [], 'paths of the sandbox left');
      assert.deepEqual(lockDirFiles(...left.lockRoots), [], 'files under /run/neuv-bpf left');
    });

    it(`${runs} argument vectors in-process through buildProgram() and ${real} real CLI invocations: no crash, one line per error, no change when refused (seed ${seed})`, async function () {
      // Ten minutes: the run takes about two on a quiet machine and five at a load average of 15.
      this.timeout(SOAK ? 3 * 3600e3 : 600000);
      try {
        const cfg: ChildConfig = { ...makeSandbox(uniqueName), seed, runs, real, realParallel: 2 };
        // Our own deadline, 10 s before mocha's, kills the child so that a run too long fails here and
        // cleans up rather than outliving the test (mocha --timeout 0: no deadline of ours either).
        const limitMs = this.timeout() - 10000;
        const { code, out, err, timedOut } = await runSandbox(cfg, Math.max(0, limitMs), { onCleanup, removeLockFiles }).done;
        assert.ok(!timedOut, `fuzz child killed after ${limitMs / 1000} s (the test's time less 10 s): ${err.slice(-3000)}`);
        assert.equal(code, 0, `fuzz child exited ${code}: ${err.slice(-3000)}`);
        const rep = JSON.parse(out.trim().split('\n').pop()!) as ChildReport;
        const reportFile = path.join(os.tmpdir(), `nbt-fuzz-report-${process.pid}.json`);
        fs.writeFileSync(reportFile, JSON.stringify(rep, null, 2));
        // eslint-disable-next-line no-console
        console.log(
          `      in-process: ${rep.cases} vectors (${rep.skipped} skipped by the sandbox guard) in ${(rep.ms.inProcess / 1000).toFixed(0)} s, exits ${JSON.stringify(rep.codes)}, ${rep.resets} baseline rebuilds after accepted changes; ` +
            `real CLI: ${rep.real.runs} runs in ${(rep.ms.real / 1000).toFixed(0)} s, exits ${JSON.stringify(rep.real.codes)}`,
        );
        for (const k of rep.known) {
          // eslint-disable-next-line no-console
          console.log(`        - known: ${k}`);
        }
        assert.deepEqual(rep.crashes.slice(0, 5), [], `no crash (all in ${reportFile})`);
        assert.deepEqual(rep.changed.slice(0, 5), [], `a refused vector changed nothing (all in ${reportFile})`);
        assert.deepEqual(rep.real.problems.slice(0, 5), [], `real invocations (all in ${reportFile})`);
        fs.rmSync(reportFile, { force: true });
        assert.ok(rep.cases + rep.skipped === runs && rep.cases >= runs * 0.85, `${rep.cases} vectors ran`);
        assert.ok(rep.real.runs >= real * 0.9, `${rep.real.runs} real runs`);
        assert.ok(Object.keys(rep.codes).length >= 4, 'the vectors reach several outcomes');
      } finally {
        runCleanups();
      }
    });
  });
}
