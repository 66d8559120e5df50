/**
 * `neuv-bpf demo`, the README's first command, run as a user runs it: a child
 * process of bin/neuv-bpf. It must say "all as expected", exit 0 and leave
 * nothing of its own behind: no netns neuvdemo-<pid>-*, no pin root
 * /sys/fs/bpf/neuv-demo-<pid>, no lock, journal or state file of that pin root
 * under /run/neuv-bpf. The same when it is interrupted (SIGINT) halfway.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCK_DIR, lockDirFiles } from '../src/lock';
import { ROOT, TIME_SCALE, cli, requireKernel, sh, leakChecks } from './helpers';
import { findTarball, nvdpUnavailable } from '../harness/nvdp';

interface DemoRun {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the demo; with interruptOn, sends it `sig` once its stdout matches. */
function demo(interruptOn?: RegExp, sig: NodeJS.Signals = 'SIGINT'): Promise<DemoRun> {
  return new Promise((resolve, reject) => {
    const p = spawn(path.join(ROOT, 'bin', 'neuv-bpf'), ['demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    p.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (interruptOn && !sent && interruptOn.test(stdout)) {
        sent = true;
        p.kill(sig);
      }
    });
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ pid: p.pid!, code, signal, stdout, stderr }));
  });
}

/** What a demo with this pid left: netns, pin root, files under /run/neuv-bpf. */
function leftBy(pid: number): string[] {
  const out: string[] = [];
  for (const l of sh('ip', ['netns', 'list'], { allowFail: true }).split('\n')) {
    const n = l.split(' ')[0];
    if (n && n.startsWith(`neuvdemo-${pid}-`)) out.push(`netns ${n}`);
  }
  const pins = `/sys/fs/bpf/neuv-demo-${pid}`;
  if (fs.existsSync(pins)) out.push(`pin root ${pins}`);
  for (const f of lockDirFiles(pins)) out.push(`${LOCK_DIR}/${f}`);
  return out;
}

/** Processes that run in one of the demo's netns (its servers, clients, DP). */
function processesOf(pid: number): string[] {
  const nsInodes = new Set<number>();
  for (const n of fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []) if (n.startsWith(`neuvdemo-${pid}-`)) nsInodes.add(fs.statSync(`/run/netns/${n}`).ino);
  const out: string[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (!nsInodes.has(fs.statSync(`/proc/${d}/ns/net`).ino)) continue;
      out.push(`${d}: ${fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ').trim()}`);
    } catch {
      continue; // gone meanwhile
    }
  }
  return out;
}

describe('neuv-bpf demo --help (unit)', function () {
  it("says which DP the demo runs here: NeuVector's when its tarball is found, else the stub, and why", function () {
    const last = (env: NodeJS.ProcessEnv) => {
      const r = cli(['demo', '--help'], { env });
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.trim().split('\n').pop();
    };
    const why = nvdpUnavailable();
    assert.equal(last({}), why ? `Here the demo runs the stub DP: ${why}.` : `Here the demo runs NeuVector's DP, built from ${findTarball()}.`);
    assert.equal(last({ NEUV_BPF_DEMO_STUB: '1' }), 'Here the demo runs the stub DP (NEUV_BPF_DEMO_STUB=1).');
    assert.match(last({ NEUV_BPF_NVDP_TARBALL: '/nonexistent/neuvector-dp-0.tar.gz' }) ?? '', /^Here the demo runs the stub DP: NeuVector DP tarball not found \(looked at \/nonexistent\/neuvector-dp-0\.tar\.gz;/);
  });
});

describe('neuv-bpf demo (kernel, the README command)', function () {
  this.timeout(180000 * TIME_SCALE);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('says "all as expected", exits 0 and leaves no netns, pin or file under /run/neuv-bpf', async function () {
    const r = await demo();
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^all as expected \(\d+\.\d s\)$/m);
    assert.match(r.stdout, /removed every namespace, interface and pin of the demo/);
    assert.deepEqual(leftBy(r.pid), []);
  });

  it('interrupted (SIGINT) once its topology is up: exits 130 and still leaves nothing', async function () {
    const r = await demo(/loaded the datapath/);
    assert.equal(r.code, 130, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stderr, /SIGINT, cleaning up/);
    assert.deepEqual(leftBy(r.pid), []);
  });

  it('SIGKILLed halfway: what it left, the next demo removes, and then passes', async function () {
    const k = await demo(/loaded the datapath/, 'SIGKILL');
    assert.equal(k.signal, 'SIGKILL');
    const left = leftBy(k.pid);
    assert.ok(left.some((l) => l.startsWith('netns ')) && left.some((l) => l.startsWith('pin root ')), `a SIGKILLed demo leaves its netns and pins: ${left.join(', ')}`);
    assert.deepEqual(processesOf(k.pid), [], 'no process of the killed demo runs on');
    const r = await demo();
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, new RegExp(`removed pin root /sys/fs/bpf/neuv-demo-${k.pid}, left by an earlier demo`));
    assert.match(r.stdout, /^all as expected/m);
    assert.deepEqual(leftBy(k.pid), [], 'the killed demo\'s leftovers');
    assert.deepEqual(leftBy(r.pid), []);
  });
});
