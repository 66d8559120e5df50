/**
 * The bad-input matrix (issue 6): every command, fed malformed MACs, a
 * multicast workload MAC, unknown, duplicate and wrong-type interfaces, ids
 * out of range, interface names with spaces, slashes, shell metacharacters or
 * more than 15 bytes, a network namespace that does not exist, a pin root
 * that is not on a bpffs, an object the verifier refuses, JSON lines with
 * missing or extra fields... must exit non-zero with one clear line on
 * stderr, print nothing on stdout, and leave the kernel byte for byte as it
 * was: links, qdiscs, filters, pins and map entries (kernelState), plus the
 * container netns and the places a wrong pin root points at.
 *
 * Every command of the CLI is covered: those without a case of their own
 * here get a generic one (an unknown option), so a new command is in the
 * matrix from the day it is added.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { spawnSync } from 'node:child_process';
import { addAddrs, veth } from '../harness/net';
import { CliResult, ROOT, cli, kernelState, makeNetns, makePinRoot, Netns, removeLockFiles, requireKernel, uniqueName, leakChecks } from './helpers';
import { buildProgram } from '../src/cli';
import { LOCK_DIR, lockDirFiles } from '../src/lock';

interface Case {
  what: string;
  args: string[];
  code: number;
  re: RegExp;
  input?: string;
  /** Global options instead of the suite's --netns/--bpffs (for cases about those). */
  globals?: string[];
  /** A verifier refusal prints the end of the verifier log after its one error line, by design. */
  verifierLog?: boolean;
  /** --json: the line is a JSON object {error, code, errno?} (errno: the kernel refused). */
  json?: { errno: boolean };
  /**
   * A known finding (reported to the owner of the code): the refusal does
   * change the kernel, in this way. The case checks it still does (so a fix
   * shows up here, to move the case to the clean ones), then puts it back.
   */
  known?: { why: string; changed: () => boolean; putBack: () => void };
}

/** Every leaf command as its path of names ("pair add"). */
function leafCommands(c: Command, prefix: string[] = []): string[][] {
  const out: string[][] = [];
  for (const sub of c.commands) {
    if (sub.name() === 'help') continue;
    const p = [...prefix, sub.name()];
    if (sub.commands.length) out.push(...leafCommands(sub, p));
    else out.push(p);
  }
  return out;
}

/** The container's links, addresses and routes: one `ip -batch` (one process, after every case). */
function containerState(ns: Netns): string {
  return ns.exec('ip', ['-j', '-batch', '-'], { input: 'link show\naddr show\nroute show\n' });
}

describe('bad input matrix (kernel)', function () {
  let enf: Netns;
  let ctr: Netns;
  let host: Netns;
  let pins: string;
  let plainDir: string;
  /** Special files for --file, --obj, --netns (issue 25): a FIFO without a writer, a directory, a regular file. */
  let special: { dir: string; fifo: string; sub: string; file: string; big: string; state: () => string };
  /** Pin roots where nothing is loaded (the commands still take their locks: removed in after()). */
  const nonePinRoots: string[] = [];
  const nonePins = (): string => {
    const p = `/sys/fs/bpf/${uniqueName('nbtnone')}`;
    nonePinRoots.push(p);
    return p;
  };
  let state0: string;
  let ctr0: string;
  const MAC1 = '02:00:00:00:00:01';
  const MAC2 = '02:00:00:00:00:02';
  const run = (c: Case): CliResult => cli([...(c.globals ?? ['--netns', enf.name, '--bpffs', pins]), ...c.args], { input: c.input });

  before(function () {
    requireKernel(this);
    enf = makeNetns();
    ctr = makeNetns();
    host = makeNetns();
    pins = makePinRoot();
    plainDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-notbpffs-'));
    {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-special-'));
      const s = { dir, fifo: path.join(dir, 'fifo'), sub: path.join(dir, 'sub'), file: path.join(dir, 'file'), big: path.join(dir, 'big') };
      assert.equal(spawnSync('mkfifo', [s.fifo]).status, 0);
      fs.mkdirSync(s.sub);
      fs.writeFileSync(s.file, 'not a namespace\n');
      fs.writeFileSync(s.big, '');
      fs.truncateSync(s.big, (64 << 20) + 1); // sparse: 64 MiB and a byte, on no disk
      const state = () => [dir, s.fifo, s.sub, s.file, s.big].map((p) => { const st = fs.lstatSync(p); return `${p} ${st.ino} ${st.mode} ${st.size} ${st.mtimeMs} ${st.ctimeMs}`; }).join('\n') + fs.readdirSync(dir).sort().join(' ');
      special = { ...s, state };
    }
    const l = cli(['--netns', enf.name, '--bpffs', pins, 'load']);
    assert.equal(l.code, 0, l.stderr);
    for (const i of [1, 2]) {
      veth({ ns: enf, name: `vin${i}` }, { ns: enf, name: `wl${i}` });
      veth({ ns: enf, name: `vex${i}` }, { ns: enf, name: `h${i}` });
    }
    enf.ip('link', 'add', 'br9', 'type', 'bridge');
    const a = cli(['--netns', enf.name, '--bpffs', pins, 'pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--id', '100', '--mode', 'tap']);
    assert.equal(a.code, 0, a.stderr);
    // A container (not intercepted) whose eth0 is a veth to the host netns.
    // The host end stays down: eth0 without carrier, so no IPv6 link-local address goes
    // through DAD under the test and the container's snapshot stays what it was.
    veth({ ns: host, name: 'hc' }, { ns: ctr, name: 'eth0' }, { up: false });
    addAddrs(ctr, 'eth0', '10.55.0.2/24');
    ctr.ip('link', 'set', 'eth0', 'up');
    state0 = kernelState(enf, pins);
    ctr0 = containerState(ctr);
  });
  after(function () {
    if (plainDir) fs.rmSync(plainDir, { recursive: true, force: true });
    if (special) fs.rmSync(special.dir, { recursive: true, force: true });
    if (plainDir) removeLockFiles(plainDir, path.join(plainDir, 'pins'));
    removeLockFiles(...nonePinRoots, newRoot);
    fs.rmSync(newRoot, { recursive: true, force: true });
  });
  // One fixture for the whole matrix (made in before): cleaned up after it.
  leakChecks({ perTest: false });

  const add2 = ['pair', 'add', '--in', 'vin2', '--ex', 'vex2'];
  const line = (o: object) => JSON.stringify(o);
  const good2 = line({ in: 'vin2', ex: 'vex2', mac: MAC2 });
  const fileCase = (what: string, text: string, code: number, re: RegExp): Case => ({ what: `pair add --file: ${what}`, args: ['pair', 'add', '--file', '-'], code, re, input: text });
  const ifnameCases: Array<[string, string]> = [
    ['a space', 'vin 2'],
    ['a slash', 'vin/2'],
    ['a colon', 'vin:2'],
    ['$(...)', '$(reboot)'],
    ['backquotes', '`id`'],
    ['a semicolon', 'vin2;ls'],
    ['a pipe', 'vin2|sh'],
    ['an ampersand', 'vin2&'],
    ['a redirection', 'vin2>x'],
    ['a quote', "vin2'"],
    ['a newline', 'vin2\nvex2'],
    ['a NUL-free control character', 'vin2\t'],
    ['16 bytes', 'abcdefghijklmnop'],
    ['15 characters but 30 bytes', 'ééééééééééééééé'],
    ['only a dot', '.'],
    ['nothing', ''],
  ];

  // Dynamic cases need the suite's names, so they are built lazily.
  const newRoot = `/sys/fs/bpf/${uniqueName('nbtnew')}`;
  const cases = (): Case[] => [
    // ---- global options
    { what: 'unknown command', args: ['frobnicate'], code: 2, re: /unknown command 'frobnicate'/ },
    { what: 'unknown command close to a real one (the suggestion stays on the line)', args: ['lod'], code: 2, re: /unknown command 'lod' \(Did you mean load\?\)$/ },
    { what: 'unknown option close to a real one', args: ['pair', 'add', '--macc', MAC2], code: 2, re: /unknown option '--macc' \(Did you mean --mac\?\)$/ },
    { what: 'bad --log-level', args: ['--log-level', 'loud', 'show'], code: 2, re: /unknown log level 'loud' \(expected one of trace, debug, info, warn, error\)$/ },
    { what: 'pair without a subcommand', args: ['pair'], code: 2, re: /^neuv-bpf: pair needs a subcommand: add, mode, del \(neuv-bpf pair --help\)$/ },
    { what: 'flow without a subcommand', args: ['flow'], code: 2, re: /^neuv-bpf: flow needs a subcommand: allow, deny, revoke, list \(neuv-bpf flow --help\)$/ },
    { what: 'no command', args: [], code: 2, re: /^neuv-bpf: no command given \(neuv-bpf --help lists them\)$/ },
    { what: 'non-existent netns (name)', args: ['show'], globals: ['--netns', 'nbt-no-such-ns', '--bpffs', pins], code: 4, re: /network namespace nbt-no-such-ns not found/ },
    { what: 'non-existent netns (path)', args: ['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2], globals: ['--netns', '/nonexistent/netns', '--bpffs', pins], code: 4, re: /network namespace \/nonexistent\/netns not found/ },
    { what: 'netns name with shell metacharacters', args: ['show'], globals: ['--netns', 'x;reboot', '--bpffs', pins], code: 2, re: /network namespace name 'x;reboot' is not valid/ },
    { what: 'relative pin root', args: ['show'], globals: ['--netns', enf.name, '--bpffs', 'relative/pins'], code: 2, re: /pin root 'relative\/pins' must be an absolute path/ },
    { what: 'load: pin root on a non-bpffs path', args: ['load'], globals: ['--netns', enf.name, '--bpffs', path.join(plainDir, 'pins')], code: 2, re: /is not on a bpffs/ },
    { what: 'unload: pin root on a non-bpffs path', args: ['unload'], globals: ['--netns', enf.name, '--bpffs', plainDir], code: 2, re: /not on a bpffs/ },
    { what: 'pair add: pin root where nothing is loaded', args: ['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2], globals: ['--netns', enf.name, '--bpffs', nonePins()], code: 4, re: /the datapath is not loaded/ },

    // ---- load
    { what: 'load: object file missing', args: ['load', '--obj', '/nonexistent/neuv.bpf.o'], code: 4, re: /--obj \/nonexistent\/neuv.bpf.o not found/ },
    { what: 'load: object the verifier refuses', args: ['load', '--obj', path.join(ROOT, 'build', 'fixtures', 'reject.bpf.o')], code: 6, re: /neuv_vbr|verifier|Permission denied|Invalid argument/, verifierLog: true },
    { what: 'load: object with drifted layouts', args: ['load', '--obj', path.join(ROOT, 'build', 'fixtures', 'drift.bpf.o')], code: 6, re: /does not match the loader's map layouts/ },
    { what: 'load: not an ELF object', args: ['load', '--obj', '/etc/hostname'], code: 6, re: /hostname/ },
    { what: 'load: unknown option', args: ['load', '--jumbo-frames'], code: 2, re: /unknown option '--jumbo-frames'/ },
    // vbr-neuv/vth-neuv keep their MTU (2048 here): the --jumbo change is undone with the failed load.
    { what: 'load --jumbo: object the verifier refuses', args: ['load', '--jumbo', '--obj', path.join(ROOT, 'build', 'fixtures', 'reject.bpf.o')], code: 6, re: /verifier refused/, verifierLog: true },
    // The pin root this run created is removed again (the kernel-state check sees any leftover pin or directory).
    { what: 'load: not an object file, on a new pin root', args: ['load', '--obj', '/etc/hostname'], globals: ['--netns', host.name, '--bpffs', newRoot], code: 6, re: /open BPF object \/etc\/hostname/ },

    // ---- pair add
    { what: 'malformed MAC (5 bytes)', args: [...add2, '--mac', '02:00:00:00:00'], code: 2, re: /malformed MAC "02:00:00:00:00"/ },
    { what: 'malformed MAC (not hex)', args: [...add2, '--mac', 'zz:00:00:00:00:01'], code: 2, re: /malformed MAC/ },
    { what: 'malformed MAC (7 bytes)', args: [...add2, '--mac', '02:00:00:00:00:01:02'], code: 2, re: /malformed MAC/ },
    { what: 'multicast MAC as workload MAC', args: [...add2, '--mac', '01:00:5e:00:00:fb'], code: 2, re: /is a multicast address: a workload MAC must be unicast/ },
    { what: 'broadcast MAC as workload MAC', args: [...add2, '--mac', 'ff:ff:ff:ff:ff:ff'], code: 2, re: /broadcast address/ },
    { what: 'all-zero MAC', args: [...add2, '--mac', '00:00:00:00:00:00'], code: 2, re: /all zeros/ },
    { what: 'a UCMAC as workload MAC', args: [...add2, '--mac', '4e:65:75:56:00:01'], code: 2, re: /"NeuV"/ },
    { what: 'unknown interface', args: ['pair', 'add', '--in', 'nosuch0', '--ex', 'vex2', '--mac', MAC2], code: 4, re: /interface nosuch0 not found in this network namespace/ },
    { what: 'interface of another netns', args: ['pair', 'add', '--in', 'vin2', '--ex', 'hc', '--mac', MAC2], code: 4, re: /interface hc not found in this network namespace/ },
    { what: 'wrong-type interface (a bridge)', args: ['pair', 'add', '--in', 'vin2', '--ex', 'br9', '--mac', MAC2], code: 2, re: /br9 is not a veth \(it is a bridge\)/ },
    { what: 'wrong-type interface (loopback)', args: ['pair', 'add', '--in', 'lo', '--ex', 'vex2', '--mac', MAC2], code: 2, re: /lo is not a veth/ },
    { what: 'vbr-neuv as a workload port', args: ['pair', 'add', '--in', 'vin2', '--ex', 'vbr-neuv', '--mac', MAC2], code: 2, re: /DP port pair/ },
    { what: 'duplicate interface (vin of another pair)', args: ['pair', 'add', '--in', 'vin1', '--ex', 'vex2', '--mac', MAC2], code: 5, re: /vin1 is already the vin of pair vin1\/vex1 \(id 100\)/ },
    { what: 'duplicate interface (a vex as vin)', args: ['pair', 'add', '--in', 'vex1', '--ex', 'vex2', '--mac', MAC2], code: 5, re: /vex1 is already the vex of pair/ },
    { what: 'the same interface twice', args: ['pair', 'add', '--in', 'vin2', '--ex', 'vin2', '--mac', MAC2], code: 2, re: /in and ex are the same interface/ },
    { what: 'existing pair with another MAC', args: ['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC2], code: 5, re: /already exists with MAC/ },
    { what: 'duplicate id', args: [...add2, '--mac', MAC2, '--id', '100'], code: 5, re: /port id 100 is already used/ },
    { what: 'id out of range (65536)', args: [...add2, '--mac', MAC2, '--id', '65536'], code: 2, re: /--id "65536" is out of range \(expected 0\.\.65535\)/ },
    { what: 'id out of range (-1)', args: [...add2, '--mac', MAC2, '--id', '-1'], code: 2, re: /--id "-1" is out of range/ },
    { what: 'id not a number', args: [...add2, '--mac', MAC2, '--id', '0x10'], code: 2, re: /--id "0x10" is not an integer/ },
    { what: 'id huge', args: [...add2, '--mac', MAC2, '--id', '99999999999999999999999'], code: 2, re: /out of range/ },
    { what: 'mode not addable', args: [...add2, '--mac', MAC2, '--mode', 'drop'], code: 2, re: /argument 'drop' is invalid/ },
    { what: 'missing --mac', args: add2, code: 2, re: /pair add needs --mac/ },
    { what: '--file with --in', args: ['pair', 'add', '--file', '-', '--in', 'vin2'], code: 2, re: /--file cannot be combined/ },
    { what: '--file missing', args: ['pair', 'add', '--file', '/nonexistent/pairs.jsonl'], code: 4, re: /--file \/nonexistent\/pairs.jsonl not found: No such file or directory \(ENOENT\)/ },
    ...ifnameCases.map(([what, n]): Case => ({ what: `interface name with ${what}`, args: ['pair', 'add', '--in', n, '--ex', 'vex2', '--mac', MAC2], code: 2, re: /in \(vin interface name\) .*(contains|longer than 15 bytes|is not allowed|is empty)/ })),

    // ---- pair add --file (JSON lines)
    fileCase('missing field', `${good2}\n${line({ in: 'vin3', ex: 'vex3' })}\n`, 2, /stdin line 2: missing field 'mac'/),
    fileCase('missing fields', `${line({ mac: MAC2 })}\n`, 2, /stdin line 1: missing fields 'in', 'ex'/),
    fileCase('extra field', `${line({ in: 'vin2', ex: 'vex2', mac: MAC2, vlan: 4 })}\n`, 2, /stdin line 1: unknown field 'vlan'/),
    fileCase('extra fields', `${line({ in: 'vin2', ex: 'vex2', mac: MAC2, a: 1, b: 2 })}\n`, 2, /stdin line 1: unknown fields 'a', 'b'/),
    fileCase('wrong type (mac a number)', `${line({ in: 'vin2', ex: 'vex2', mac: 2 })}\n`, 2, /stdin line 1: malformed MAC/),
    fileCase('wrong type (in a number)', `${line({ in: 7, ex: 'vex2', mac: MAC2 })}\n`, 2, /stdin line 1: in \(vin interface name\) must be a string/),
    fileCase('wrong type (ipv6ToDp a string)', `${line({ in: 'vin2', ex: 'vex2', mac: MAC2, ipv6ToDp: 'yes' })}\n`, 2, /ipv6ToDp must be true or false/),
    fileCase('id out of range', `${line({ in: 'vin2', ex: 'vex2', mac: MAC2, id: 70000 })}\n`, 2, /stdin line 1: port id 70000 is out of range/),
    fileCase('not JSON', `${good2}\n{"in":\n`, 2, /stdin line 2: not valid JSON/),
    fileCase('a JSON array', `["vin2","vex2"]\n`, 2, /stdin line 1: expected a JSON object/),
    fileCase('null', `null\n`, 2, /stdin line 1: expected a JSON object/),
    fileCase('an interface twice', `${good2}\n${line({ in: 'vin2', ex: 'vex1', mac: MAC1 })}\n`, 5, /stdin line 2: interface vin2 is also in stdin line 1/),
    fileCase('an interface name with a shell metacharacter', `${line({ in: 'vin2;reboot', ex: 'vex2', mac: MAC2 })}\n`, 2, /stdin line 1: in \(vin interface name\) 'vin2;reboot' contains characters outside/),
    fileCase('a multicast MAC', `${line({ in: 'vin2', ex: 'vex2', mac: '33:33:00:00:00:01' })}\n`, 2, /stdin line 1: MAC 33:33:00:00:00:01 is a multicast address/),
    fileCase('unknown interface (all or nothing)', `${good2}\n${line({ in: 'nosuch0', ex: 'nosuch1', mac: '02:00:00:00:00:09' })}\n`, 4, /stdin line 2: interface nosuch0 not found/),
    fileCase('nothing', '\n\n', 2, /stdin: no pairs/),

    // ---- pair mode / del
    { what: 'pair mode: unknown mode', args: ['pair', 'mode', '--id', '100', 'sideways'], code: 2, re: /unknown mode "sideways"/ },
    { what: 'pair mode: no mode', args: ['pair', 'mode', '--id', '100'], code: 2, re: /missing required argument 'mode'/ },
    { what: 'pair mode: no selector', args: ['pair', 'mode', 'tap'], code: 2, re: /exactly one of --in VIN, --ex VEX or --id N/ },
    { what: 'pair mode: two selectors', args: ['pair', 'mode', '--in', 'vin1', '--id', '100', 'tap'], code: 2, re: /exactly one of/ },
    { what: 'pair mode: id out of range', args: ['pair', 'mode', '--id', '65536', 'tap'], code: 2, re: /out of range/ },
    { what: 'pair mode: unknown id', args: ['pair', 'mode', '--id', '7', 'tap'], code: 4, re: /no pair with port id 7/ },
    { what: 'pair mode: interface with shell metacharacters', args: ['pair', 'mode', '--in', '$(id)', 'tap'], code: 2, re: /contains characters outside/ },
    { what: 'pair mode: a vex named as vin', args: ['pair', 'mode', '--in', 'vex1', 'tap'], code: 4, re: /vex1 is the vex of pair id 100, not a vin/ },
    { what: 'pair del: port in no pair', args: ['pair', 'del', '--ex', 'vex2'], code: 4, re: /vex2 is not in any pair/ },
    { what: 'pair del: id not an integer', args: ['pair', 'del', '--id', '1.5'], code: 2, re: /--id "1.5" is not an integer/ },
    { what: 'pair del: name too long', args: ['pair', 'del', '--in', 'vin-with-a-long-name'], code: 2, re: /longer than 15 bytes/ },

    // ---- show, stats, trace, repair
    { what: 'show: unknown option', args: ['show', '--all'], code: 2, re: /unknown option '--all'/ },
    { what: 'stats: interval not a number', args: ['stats', '--watch', '--interval', 'soon'], code: 2, re: /--interval "soon" is not a decimal number \(expected 0\.1\.\.3600 seconds\)/ },
    { what: 'stats: interval zero', args: ['stats', '--watch', '--interval', '0'], code: 2, re: /--interval "0"/ },
    { what: 'trace: pair id out of range', args: ['trace', '--pair', '70000', '--count', '1'], code: 2, re: /--pair "70000" is out of range \(expected 0\.\.65535\)/ },
    { what: 'trace: both --pair and --in', args: ['trace', '--pair', '1', '--in', 'vin1', '--count', '1'], code: 2, re: /at most one of --pair ID and --in VIN/ },
    { what: 'trace: --count not a number', args: ['trace', '--count', 'many'], code: 2, re: /--count "many" is not an integer/ },
    { what: 'trace: unknown port', args: ['trace', '--in', 'nosuch0', '--count', '1'], code: 4, re: /interface nosuch0 not found/ },
    { what: 'repair: unknown option', args: ['repair', '--force'], code: 2, re: /unknown option '--force'/ },
    { what: 'repair: pin root where nothing is loaded', args: ['repair'], globals: ['--netns', enf.name, '--bpffs', nonePins()], code: 4, re: /the datapath is not loaded/ },

    // ---- intercept / release
    { what: 'intercept: no such process', args: ['intercept', '--pid', '4194303'], code: 4, re: /no process with pid 4194303/ },
    { what: 'intercept: pid not a number', args: ['intercept', '--pid', '12ab'], code: 2, re: /--pid "12ab" is not an integer \(expected 1\.\.4194304\)/ },
    { what: 'intercept: pid and netns both', args: ['intercept', '--pid', '1', '--container-netns', ctr.name], code: 2, re: /exactly one of --pid PID or --container-netns PATH/ },
    { what: 'intercept: non-existent container netns', args: ['intercept', '--container-netns', 'nbt-no-such-ctr'], code: 4, re: /network namespace of netns \/var\/run\/netns\/nbt-no-such-ctr not found/ },
    { what: 'intercept: netns name with a space', args: ['intercept', '--container-netns', 'a b'], code: 2, re: /network namespace name 'a b' is not valid/ },
    { what: 'intercept: port name with shell metacharacters', args: ['intercept', '--container-netns', ctr.name, '--port', 'eth0;reboot'], code: 2, re: /contains characters outside|not valid/ },
    { what: 'intercept: port name too long for vex<tag>-<port>', args: ['intercept', '--container-netns', ctr.name, '--port', 'eth0eth0eth0'], code: 2, re: /too long|longer than 15 bytes/ },
    { what: "intercept: the enforcer's own netns", args: ['intercept', '--container-netns', enf.name], code: 2, re: /enforcer's own network namespace/ },
    { what: 'intercept: unknown port in the container', args: ['intercept', '--container-netns', ctr.name, '--port', 'eth7'], code: 4, re: /eth7/ },
    { what: 'intercept: id out of range', args: ['intercept', '--container-netns', ctr.name, '--id', '65536'], code: 2, re: /out of range/ },
    { what: 'release: not intercepted', args: ['release', '--container-netns', ctr.name], code: 4, re: /is not intercepted/ },
    { what: 'release: no target', args: ['release'], code: 2, re: /exactly one of --pid PID or --container-netns PATH/ },
  ];

  // Bounded input (issue 25): special files, numbers past every range, huge names, bad --netns paths, --json errors.
  const flowArgs = (verdict: string, ...more: string[]) => ['flow', verdict, '--id', '100', '--proto', 'udp', '--src', '10.0.0.1:1', '--dst', '10.0.0.2:2', ...more];
  const digits = '1'.repeat(100000);
  const boundedCases = (): Case[] => [
    { what: 'pair add --file /dev/zero (a character device: was read for ever)', args: ['pair', 'add', '--file', '/dev/zero'], code: 2, re: /--file \/dev\/zero is a character device, not a regular file$/ },
    { what: 'pair add --file a FIFO without a writer (blocked for ever)', args: ['pair', 'add', '--file', special.fifo], code: 2, re: /--file \S+\/fifo is a FIFO, not a regular file$/ },
    { what: 'pair add --file a directory', args: ['pair', 'add', '--file', special.sub], code: 2, re: /is a directory, not a regular file$/ },
    { what: 'pair add --file past 64 MiB', args: ['pair', 'add', '--file', special.big], code: 2, re: /--file \S+\/big is larger than 64 MiB/ },
    { what: 'pair add --file - (stdin) past 64 MiB', args: ['pair', 'add', '--file', '-'], input: '\n'.repeat((64 << 20) + 1), code: 2, re: /--file - \(stdin\) is larger than 64 MiB/ },
    { what: 'adopt --from /dev/zero', args: ['adopt', '--from', '/dev/zero'], code: 2, re: /--from \/dev\/zero is a character device/ },
    { what: 'load --obj a FIFO', args: ['load', '--obj', special.fifo], code: 2, re: /--obj \S+ is a FIFO/ },
    { what: 'flow allow --timeout 99999999999 (was a raw BigInt RangeError)', args: flowArgs('allow', '--timeout', '99999999999'), code: 2, re: /--timeout "99999999999" is out of range \(expected 0\.001\.\.31536000 seconds\)$/ },
    { what: 'flow deny --idle 99999999999', args: flowArgs('deny', '--idle', '99999999999'), code: 2, re: /--idle "99999999999" is out of range/ },
    { what: 'flow allow --timeout past 2^64', args: flowArgs('allow', '--timeout', '18446744073709551617'), code: 2, re: /--timeout "18446744073709551617" is out of range/ },
    { what: 'flow allow --idle with an exponent', args: flowArgs('allow', '--idle', '1e400'), code: 2, re: /--idle "1e400" is not a decimal number/ },
    { what: 'flow allow --timeout -0', args: flowArgs('allow', '--timeout', '-0'), code: 2, re: /--timeout "-0" is out of range/ },
    { what: 'flow allow --src port past 65535', args: ['flow', 'allow', '--id', '100', '--proto', 'udp', '--src', `10.0.0.1:${digits.slice(0, 30)}`, '--dst', '10.0.0.2:2'], code: 2, re: /source port "1{30}" is out of range \(expected 0\.\.65535\)$/ },
    { what: 'trace --duration 3000000 (overflowed Node\'s timer: stopped after 1 ms)', args: ['trace', '--duration', '3000000'], code: 2, re: /--duration "3000000" is out of range \(expected 0\.1\.\.604800 seconds\)$/ },
    { what: 'trace --count with an exponent', args: ['trace', '--count', '1e3'], code: 2, re: /--count "1e3" is not an integer/ },
    { what: 'stats --watch --interval 1e-9 (redrew 2,400 times a second)', args: ['stats', '--watch', '--interval', '1e-9'], code: 2, re: /--interval "1e-9" is not a decimal number \(expected 0\.1\.\.3600 seconds\)$/ },
    { what: 'stats --watch --interval below 0.1 s', args: ['stats', '--watch', '--interval', '0.01'], code: 2, re: /--interval "0\.01" is out of range/ },
    { what: 'pair del --id of 100,000 digits (was "port id Infinity")', args: ['pair', 'del', '--id', digits], code: 2, re: /--id "1{64}\.\.\." is out of range \(expected 0\.\.65535\)$/ },
    { what: 'pair mode --id past 2^53', args: ['pair', 'mode', '--id', '9007199254740993', 'tap'], code: 2, re: /--id "9007199254740993" is out of range/ },
    { what: 'intercept --pid past 2^64', args: ['intercept', '--pid', '18446744073709551617'], code: 2, re: /--pid "18446744073709551617" is out of range \(expected 1\.\.4194304\)$/ },
    { what: 'load --flows 0', args: ['load', '--flows', '0'], code: 2, re: /--flows "0" is out of range \(expected 1\.\.67108864\)$/ },
    { what: 'watch --interval 5 ms', args: ['watch', '--dp', 'local', '--interval', '5'], code: 2, re: /--interval "5" is out of range \(expected 10\.\.60000 milliseconds\)$/ },
    { what: 'pair add --in of 10,000 characters: the echo is cut', args: ['pair', 'add', '--in', 'v'.repeat(10000), '--ex', 'vex2', '--mac', MAC2], code: 2, re: /in \(vin interface name\) .*v{20}\.\.\./ },
    { what: 'pair add --file with a 1 MB interface name: the echo is cut', args: ['pair', 'add', '--file', '-'], input: `${line({ in: 'x'.repeat(1 << 20), ex: 'vex2', mac: MAC2 })}\n`, code: 2, re: /stdin line 1: in \(vin interface name\) .*x{20}\.\.\./ },
    { what: '--netns /etc/passwd (was exit 6, "kernel refused")', args: ['show'], globals: ['--netns', '/etc/passwd', '--bpffs', pins], code: 2, re: /network namespace \/etc\/passwd is a file, not a network namespace/ },
    { what: '--netns a directory', args: ['show'], globals: ['--netns', special.sub, '--bpffs', pins], code: 2, re: /network namespace \S+ is a directory, not a network namespace/ },
    { what: '--netns a FIFO (opened for real, it blocked)', args: ['show'], globals: ['--netns', special.fifo, '--bpffs', pins], code: 2, re: /network namespace \S+ is a FIFO, not a network namespace/ },
    { what: '--netns a mount namespace', args: ['show'], globals: ['--netns', '/proc/self/ns/mnt', '--bpffs', pins], code: 2, re: /network namespace \/proc\/self\/ns\/mnt is a mount namespace, not a network namespace/ },
    { what: 'intercept --container-netns a regular file', args: ['intercept', '--container-netns', special.file], code: 2, re: /is a file, not a network namespace/ },
    { what: '--json: a usage error is a JSON object', args: ['--json', ...add2, '--mac', MAC2, '--id', '65536'], code: 2, re: /^\{"error":"--id \\"65536\\" is out of range \(expected 0\.\.65535\)","code":2\}$/, json: { errno: false } },
    { what: '--json: a refusal by commander too', args: ['pair', 'add', '--json', '--macc', MAC2], code: 2, re: /"error":"unknown option '--macc' \(Did you mean --mac\?\)"/, json: { errno: false } },
    { what: '--json: not found', args: ['show', '--json'], globals: ['--netns', 'nbt-no-such-ns', '--bpffs', pins], code: 4, re: /"error":"network namespace nbt-no-such-ns not found[ "]/, json: { errno: false } },
    { what: '--json: the kernel refused (errno named, no verifier log after it)', args: ['load', '--json', '--obj', path.join(ROOT, 'build', 'fixtures', 'reject.bpf.o')], code: 6, re: /"errno":"E[A-Z]+"/, json: { errno: true } },
  ];

  it('at least 30 cases, over every command of the CLI', function () {
    const cs = [...cases(), ...boundedCases()];
    assert.ok(cs.length >= 30, `${cs.length} cases`);
    const covered = new Set(cs.map((c) => c.args.filter((a) => /^[a-z]+$/.test(a)).slice(0, 2).join(' ')));
    const missing = leafCommands(buildProgram(() => undefined)).map((p) => p.join(' ')).filter((p) => ![...covered].some((c) => c === p || c.startsWith(p + ' ') || c === p.split(' ')[0]));
    // Commands without a case of their own get the generic one below.
    // eslint-disable-next-line no-console
    console.log(`      ${cs.length} cases; commands covered only by the generic unknown-option case: ${missing.join(', ') || 'none'}`);
  });

  // One mocha test per case, all against the same netns, pin root and container.
  const specific = (): Case[] => [...cases(), ...boundedCases()];
  const generic = (): Case[] =>
    leafCommands(buildProgram(() => undefined)).map((p) => ({
      what: `${p.join(' ')}: unknown option (generic case of every command)`,
      args: [...p, '--no-such-option-xyz'],
      code: 2,
      re: /unknown option '--no-such-option-xyz'/,
    }));
  it('a pin root under a directory that does not exist: the usual error line, and no lock file left behind', function () {
    const root = `/${uniqueName('nbt-nosuchdir')}/pins`;
    const runs: Array<[string[], number, RegExp]> = [
      [['load'], 2, /is not on a bpffs/],
      [['show'], 4, /the datapath is not loaded/],
      [['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2], 4, /the datapath is not loaded/],
      [['intercept', '--container-netns', ctr.name], 4, /the datapath is not loaded/],
      [['unload'], 0, /^$/],
    ];
    for (const [args, code, re] of runs) {
      const r = cli(['--netns', enf.name, '--bpffs', root, ...args]);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr.trim(), re, args.join(' '));
    }
    assert.deepEqual(lockDirFiles(root), [], `files under ${LOCK_DIR}`);
    assert.equal(kernelState(enf, pins), state0);
  });

  it('unload with a pin root where nothing is loaded is a no-op: the datapath of another pin root in that netns stays', function () {
    const r = cli(['--netns', enf.name, '--bpffs', nonePins(), 'unload']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /nothing was loaded/);
    assert.equal(kernelState(enf, pins), state0);
  });

  it('every case: non-zero exit, one clear line, nothing on stdout, the kernel as it was', function () {
    // 162 cases, each a CLI run and a read of the kernel state (kernelState and containerState: 4 processes).
    this.timeout(900000);
    const all = [...specific(), ...generic()];
    const special0 = special.state();
    const failures: string[] = [];
    const notes: string[] = [];
    for (const c of all) {
      const r = run(c);
      const lines = r.stderr.trim().split('\n').filter((l) => l.length > 0);
      const problems: string[] = [];
      if (r.code !== c.code) problems.push(`exit ${r.code}, expected ${c.code}`);
      if (c.json) {
        let o: { error?: unknown; code?: unknown; errno?: unknown } = {};
        try {
          o = JSON.parse(lines[0] ?? '') as typeof o;
        } catch {
          problems.push('the line is not JSON');
        }
        if (typeof o.error !== 'string' || o.code !== r.code) problems.push(`not {"error": "...", "code": ${r.code}}`);
        if ((typeof o.errno === 'string') !== c.json.errno) problems.push(c.json.errno ? 'no errno' : `an errno (${String(o.errno)})`);
        if (lines.length !== 1) problems.push(`${lines.length} stderr lines`);
      } else if (c.verifierLog) {
        if (!lines[0] || !/^neuv-bpf: /.test(lines[0])) problems.push('first line is not the error');
        if (lines.length > 1 && !/^verifier log of /.test(lines[1]!)) problems.push(`after the error line comes something else than the verifier log: ${lines[1]}`);
      } else if (lines.length !== 1) problems.push(`${lines.length} stderr lines`);
      if (lines[0] && !c.re.test(lines[0])) problems.push(`the line does not match ${c.re}`);
      if (lines[0] && !c.json && !/^neuv-bpf: \S/.test(lines[0])) problems.push('the line does not start with "neuv-bpf: "');
      if (lines[0] && Buffer.byteLength(lines[0]) > 1000) problems.push(`a line of ${Buffer.byteLength(lines[0])} bytes (at most 1,000)`);
      if (special.state() !== special0) problems.push('a special file changed');
      if (r.stdout !== '') problems.push(`stdout not empty: ${JSON.stringify(r.stdout.slice(0, 200))}`);
      if (c.known) {
        if (!c.known.changed()) problems.push(`known finding no longer happens (fixed? then drop "known" from this case): ${c.known.why}`);
        else notes.push(`${c.what}: ${c.known.why}`);
        c.known.putBack();
      }
      if (fs.existsSync(newRoot)) {
        problems.push(`a pin root it created was left behind: ${newRoot}`);
        fs.rmSync(newRoot, { recursive: true, force: true });
      }
      const st = kernelState(enf, pins);
      if (st !== state0) problems.push('the kernel state changed');
      const cs = containerState(ctr);
      if (cs !== ctr0) problems.push('the container changed');
      if (fs.readdirSync(plainDir).length !== 0) problems.push(`${plainDir} got files: ${fs.readdirSync(plainDir).join(', ')}`);
      if (problems.length) failures.push(`${c.what}: ${problems.join('; ')}\n    stderr: ${r.stderr.trim().split('\n').slice(0, 3).join(' | ')}`);
      if (st !== state0) state0 = st; // report each change once, at the case that made it
    }
    // eslint-disable-next-line no-console
    console.log(`      ${all.length} invocations (${specific().length} specific, ${generic().length} generic)`);
    // eslint-disable-next-line no-console
    for (const n of notes) console.log(`        - known: ${n}`);
    assert.deepEqual(failures, [], `${failures.length} of ${all.length} cases failed:\n${failures.join('\n')}`);
  });
});
