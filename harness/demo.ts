/**
 * `neuv-bpf demo`: a throwaway topology in private network namespaces, real
 * traffic through each mode, a table of what got through, then everything
 * removed (also on Ctrl-C).
 *
 *   host netns (bridge br0, 10.77.0.1, fd77::1)
 *     c1h --veth-- eth0 of container c1 (10.77.0.11, fd77::11, default routes via br0)
 *     c2h --veth-- eth0 of container c2 (10.77.0.12, fd77::12)
 *   enforcer netns: vbr-neuv/vth-neuv, NeuVector's DP where its tarball is found (a deny rule for TCP/UDP 9999), else the stub DP (drops TCP/UDP to port 9999)
 *
 * Both containers are intercepted by the pid of a process in them (a small
 * echo server, the "workload"), then ping, TCP, UDP, ARP, broadcast,
 * multicast and IPv6 go from c1 to c2 (and TCP from the host to c1) in
 * BYPASS, TAP and FWD. The pin root is private (/sys/fs/bpf/neuv-demo-<pid>),
 * so a real installation is never touched.
 *
 * The building blocks (Topology, the echo server and probe client in
 * harness/topology.ts, StubDp in harness/stub-dp.ts, on the builder in
 * harness/net.ts) are shared with the kernel suites.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, onCleanup, runCleanups, sh, STUB_DP, waitFor } from './proc';
import { StubCounts, StubDp } from './stub-dp';
import {
  BCAST4, ContainerNs, HOST_IP4, HOST_IP6, MCAST_GROUP, PORTS, ProbeResult, Topology,
  ping, runProbes, startServer,
} from './topology';
import { LOCK_DIR, lockDirFile, removeLockFiles } from '../src/lock';
import { onStopSignal, signalExitCode } from '../src/signals';

// Heavy modules (koffi through pairs/intercept) are loaded only when the demo
// runs, not when the CLI merely parses its arguments.
type PairsModule = typeof import('../src/pairs');
type InterceptModule = typeof import('../src/intercept');

// ================================================================ the demo

const MODES = ['bypass', 'tap', 'fwd'] as const;
type DemoMode = (typeof MODES)[number];

interface Row {
  label: string;
  /** Stub DP kind key(s) the row's frames are counted under. */
  kinds: string[];
  /** What this row must show per mode. */
  expect: Record<DemoMode, 'ok' | 'blocked'>;
  /** Expected DP involvement per mode: 'none' (bypasses the DP), 'some' (frames seen). */
  dp: Record<DemoMode, 'none' | 'some'>;
}

const ALL_OK = { bypass: 'ok', tap: 'ok', fwd: 'ok' } as const;
const DP_IPV4 = { bypass: 'none', tap: 'some', fwd: 'some' } as const;
const DP_NONE = { bypass: 'none', tap: 'none', fwd: 'none' } as const;

const ROWS: Row[] = [
  { label: 'ping c1->c2', kinds: ['icmp'], expect: ALL_OK, dp: DP_IPV4 },
  { label: `tcp c1->c2:${PORTS.tcp}`, kinds: [`tcp/${PORTS.tcp}`], expect: ALL_OK, dp: DP_IPV4 },
  { label: `udp c1->c2:${PORTS.udp}`, kinds: [`udp/${PORTS.udp}`], expect: ALL_OK, dp: DP_IPV4 },
  { label: `tcp c1->c2:${PORTS.blocked}`, kinds: [`tcp/${PORTS.blocked}`], expect: { bypass: 'ok', tap: 'ok', fwd: 'blocked' }, dp: DP_IPV4 },
  { label: `udp c1->c2:${PORTS.blocked}`, kinds: [`udp/${PORTS.blocked}`], expect: { bypass: 'ok', tap: 'ok', fwd: 'blocked' }, dp: DP_IPV4 },
  { label: `tcp host->c1:${PORTS.tcpHost}`, kinds: [`tcp/${PORTS.tcpHost}`], expect: ALL_OK, dp: DP_IPV4 },
  { label: 'arp c1 resolves c2', kinds: ['arp'], expect: ALL_OK, dp: DP_NONE },
  { label: `broadcast c1->:${PORTS.bcast}`, kinds: [`udp/${PORTS.bcast}`], expect: ALL_OK, dp: DP_NONE },
  { label: `multicast c1->${MCAST_GROUP}`, kinds: [`udp/${PORTS.mcast}`], expect: ALL_OK, dp: DP_NONE },
  { label: 'ping6 c1->c2', kinds: ['icmp6'], expect: ALL_OK, dp: DP_NONE },
  { label: `tcp6 c1->c2:${PORTS.tcp}`, kinds: [`tcp6/${PORTS.tcp}`], expect: ALL_OK, dp: DP_NONE },
];

interface Cell {
  ok: boolean;
  detail: string;
  dpFrames: number;
  dpDropped: number;
  asExpected: boolean;
}

export interface DemoOptions {
  out?: (s: string) => void;
  /** Prefix of the netns names (default neuvdemo-<pid>). */
  prefix?: string;
  /** Pin root (default /sys/fs/bpf/neuv-demo-<pid>). */
  pinRoot?: string;
}

export interface DemoResult {
  ok: boolean;
  table: string[];
  mismatches: string[];
}

/**
 * Removes what demos killed beyond cleaning up (SIGKILL) left: netns
 * neuvdemo-<pid>-*, pin roots neuv-demo-<pid> and their files under
 * /run/neuv-bpf, of processes that are gone.
 */
function removeStaleDemos(out: (s: string) => void): void {
  const gone = (pid: string) => !fs.existsSync(`/proc/${pid}`);
  for (const line of sh('ip', ['netns', 'list'], { allowFail: true }).split('\n')) {
    const m = /^neuvdemo-(\d+)-\S+/.exec(line);
    if (m && gone(m[1]!)) {
      sh('ip', ['netns', 'del', m[0]], { allowFail: true });
      out(`removed netns ${m[0]}, left by an earlier demo`);
    }
  }
  const bpffs = '/sys/fs/bpf';
  for (const f of fs.existsSync(bpffs) ? fs.readdirSync(bpffs) : []) {
    const m = /^neuv-demo-(\d+)$/.exec(f);
    if (m && gone(m[1]!)) {
      fs.rmSync(path.join(bpffs, f), { recursive: true, force: true });
      out(`removed pin root ${path.join(bpffs, f)}, left by an earlier demo`);
    }
  }
  // Their files under /run/neuv-bpf: <lockDirFile of /sys/fs/bpf/neuv-demo-><pid>.<what>.
  const stem = path.basename(lockDirFile(path.join(bpffs, 'neuv-demo-'), '')).slice(0, -1);
  const files = fs.existsSync(LOCK_DIR) ? fs.readdirSync(LOCK_DIR) : [];
  const stalePids = new Set(files.filter((f) => f.startsWith(stem)).map((f) => /^(\d+)\./.exec(f.slice(stem.length))?.[1]));
  for (const pid of stalePids) {
    if (!pid || !gone(pid)) continue;
    removeLockFiles(path.join(bpffs, `neuv-demo-${pid}`));
    out(`removed the lock files of pin root ${path.join(bpffs, `neuv-demo-${pid}`)}, left by an earlier demo`);
  }
}

/** Runs the CLI (for load/unload, as an operator would) with the demo's pin root and netns. */
function cli(args: string[]): string {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' } });
  if (r.status !== 0) throw new Error(`neuv-bpf ${args.join(' ')}: ${(r.stderr || '').trim()}`);
  return r.stdout;
}

function deltaCounts(a: StubCounts, b: StubCounts, kinds: string[]): { frames: number; dropped: number } {
  let frames = 0;
  let dropped = 0;
  for (const k of kinds) {
    const x = StubDp.frames(a, k);
    const y = StubDp.frames(b, k);
    frames += y.frames - x.frames;
    dropped += y.dropped - x.dropped;
  }
  return { frames, dropped };
}

export async function runDemo(o: DemoOptions = {}): Promise<DemoResult> {
  const out = o.out ?? ((s: string) => process.stdout.write(s + '\n'));
  const started = Date.now();
  const prefix = o.prefix ?? `neuvdemo-${process.pid}`;
  const pinRoot = o.pinRoot ?? `/sys/fs/bpf/neuv-demo-${process.pid}`;
  const { Datapath } = (await import('../src/pairs')) as PairsModule;
  const { intercept, release } = (await import('../src/intercept')) as InterceptModule;
  const { table } = await import('../src/format');

  // The stub DP, or NeuVector's real one (harness/demo-dp.ts) where its tarball is at hand.
  let stub: { counts(): Promise<StubCounts>; stop(): void } | undefined;
  let real: import('./demo-dp').RealDemoDp | undefined;
  let dpName = 'stub DP';
  let verdict = '';
  // What the demo makes is undone by the harness's cleanup stack (runCleanups), last made first, on a signal too.
  onCleanup(() => {
    fs.rmSync(pinRoot, { recursive: true, force: true });
    removeLockFiles(pinRoot);
  }, `pin root ${pinRoot}`);
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`\nneuv-bpf demo: ${sig}, cleaning up\n`);
    runCleanups();
    process.exit(signalExitCode(sig));
  };
  // A closed stdout (demo | head) must not kill the demo before it cleans up.
  const onStdoutError = () => undefined;
  process.stdout.on('error', onStdoutError);
  const offSignals = onStopSignal(onSignal);

  try {
    removeStaleDemos(out);
    if (fs.existsSync(pinRoot)) throw new Error(`${pinRoot} exists already (another demo with this pid?)`);
    if (!fs.existsSync(STUB_DP)) throw new Error(`${STUB_DP} not found (make build)`);
    const t = Topology.create({ prefix, containers: 2 });
    onCleanup(() => t.destroy(), 'the topology');
    const [c1, c2] = t.containers as [ContainerNs, ContainerNs];
    out(`topology: netns ${t.host} (bridge br0 ${HOST_IP4} ${HOST_IP6}), ${c1.ns} (${c1.ip4} ${c1.ip6}), ${c2.ns} (${c2.ip4} ${c2.ip6}), enforcer ${t.enforcer}`);

    const s1 = await startServer(t, c1.ns);
    const s2 = await startServer(t, c2.ns);
    cli(['--netns', t.enforcer, '--bpffs', pinRoot, 'load']);
    out(`loaded the datapath in ${t.enforcer} (pin root ${pinRoot})`);
    const { nvdpUnavailable } = await import('./nvdp');
    const noReal = process.env.NEUV_BPF_DEMO_STUB === '1' ? 'NEUV_BPF_DEMO_STUB=1' : nvdpUnavailable();
    if (noReal) {
      stub = await StubDp.start(t.enforcer, { dropPorts: [PORTS.blocked] });
      out(`stub DP on vth-neuv: forwards everything, drops TCP/UDP to port ${PORTS.blocked} (NeuVector's DP not used: ${noReal})`);
    }

    const pairs: Array<{ c: ContainerNs; vin: string; ucmac: string; pid: number; mac: string; bcmac: string }> = [];
    for (const [c, srv] of [[c1, s1], [c2, s2]] as const) {
      const pid = srv.child.pid!;
      const r = await intercept({ pinRoot, target: { pid }, enforcer: t.enforcer, mode: 'bypass' });
      pairs.push({ c, vin: r.vin, ucmac: r.pair.ucmac, pid, mac: r.mac, bcmac: r.pair.bcmac });
      out(`intercepted ${c.ns} eth0 (pid ${pid}): ${r.vex} / ${r.vin}, id ${r.pair.id}, ucmac ${r.pair.ucmac}`);
    }
    if (!noReal) {
      const { RealDemoDp } = await import('./demo-dp');
      const apps = [...[PORTS.tcp, PORTS.tcpHost, PORTS.blocked].map((port) => ({ port, ipProto: 6 })), ...[PORTS.udp, PORTS.udpArp, PORTS.blocked].map((port) => ({ port, ipProto: 17 }))];
      const dp = await RealDemoDp.start(t, pairs, PORTS.blocked, apps);
      onCleanup(() => dp.stop(), "NeuVector's DP");
      real = dp;
      stub = real;
      dpName = "NeuVector's DP";
      out(`NeuVector's DP (pid ${real.dp.pid}, built from its tarball) on vth-neuv: both containers its endpoints, a deny rule for TCP/UDP to ${c2.ip4}:${PORTS.blocked}`);
    }
    const dpx = stub!;

    const mc2 = await startServer(t, c2.ns, 'mcast');
    const dp = Datapath.open(pinRoot, { netns: t.enforcer });
    const cells = new Map<string, Cell>();
    const summary: string[][] = [];
    try {
      for (const mode of MODES) {
        // The DP forwards before the pairs hand it frames (FWD), and only watches after they stopped.
        if (real && mode === 'fwd') await real.mode(mode);
        for (const p of pairs) await dp.setMode({ in: p.vin }, mode);
        if (real && mode !== 'fwd') await real.mode(mode);
        const before = await dpx.counts();
        const bpfBefore = await dp.stats();
        const res = new Map<string, { ok: boolean; detail: string }>();

        const n = ping(t, c1.ns, c2.ip4, 3);
        res.set('ping c1->c2', { ok: n === 3, detail: `${n}/3` });
        // Read now: NeuVector's DP forgets an ICMP session 5 s after its last packet (SESS_TIMEOUT_ICMP), and
        // FWD's blocked probes below wait out their timeouts (a reading adds up, see harness/demo-dp.ts).
        await dpx.counts();
        const probes = await runProbes(c1.ns, [
          { t: 'tcp', host: c2.ip4, port: PORTS.tcp },
          { t: 'udp', host: c2.ip4, port: PORTS.udp, count: 5 },
          { t: 'tcp', host: c2.ip4, port: PORTS.blocked, timeoutMs: 700 },
          { t: 'udp', host: c2.ip4, port: PORTS.blocked, count: 5, timeoutMs: 500 },
          { t: 'tcp', host: c2.ip6, port: PORTS.tcp },
        ]);
        const tcpRes = (r: ProbeResult) => ({ ok: r.ok, detail: r.ok ? 'echo' : (r.error ?? 'no echo').toLowerCase() });
        const udpRes = (r: ProbeResult) => ({ ok: r.ok, detail: `${r.received}/${r.sent}${r.duplicates ? ` +${r.duplicates} dup` : ''}` });
        res.set(`tcp c1->c2:${PORTS.tcp}`, tcpRes(probes[0]!));
        res.set(`udp c1->c2:${PORTS.udp}`, udpRes(probes[1]!));
        res.set(`tcp c1->c2:${PORTS.blocked}`, tcpRes(probes[2]!));
        res.set(`udp c1->c2:${PORTS.blocked}`, udpRes(probes[3]!));
        res.set(`tcp6 c1->c2:${PORTS.tcp}`, tcpRes(probes[4]!));
        const [hostTcp] = await runProbes(t.host, [{ t: 'tcp', host: c1.ip4, port: PORTS.tcpHost }]);
        res.set(`tcp host->c1:${PORTS.tcpHost}`, tcpRes(hostTcp!));

        // ARP: forget c2, talk to it, check c1 learnt c2's real MAC.
        t.ip(c1.ns, 'neigh', 'flush', 'dev', 'eth0');
        await runProbes(c1.ns, [{ t: 'udp', host: c2.ip4, port: PORTS.udpArp, count: 1 }]);
        const neigh = JSON.parse(t.ip(c1.ns, '-j', 'neigh', 'show', c2.ip4)) as Array<{ lladdr?: string }>;
        const learnt = neigh[0]?.lladdr;
        res.set('arp c1 resolves c2', { ok: learnt === c2.mac, detail: learnt === c2.mac ? "c2's MAC" : `got ${learnt ?? 'nothing'}` });

        // Broadcast and multicast: counted by c2's server (no replies, so no unicast muddles the DP counts).
        const b0 = s2.counts.get(`udp/${PORTS.bcast}`) ?? 0;
        const m0 = mc2.counts.get(`mcast/${PORTS.mcast}`) ?? 0;
        await runProbes(c1.ns, [
          { t: 'send', host: BCAST4, port: PORTS.bcast, count: 3, broadcast: true },
          { t: 'send', host: MCAST_GROUP, port: PORTS.mcast, count: 3, multicast: true },
        ]);
        const b = await waitFor('broadcasts at c2', () => ((s2.counts.get(`udp/${PORTS.bcast}`) ?? 0) - b0 >= 3 ? 3 : undefined), 1000).catch(() => (s2.counts.get(`udp/${PORTS.bcast}`) ?? 0) - b0);
        const m = await waitFor('multicasts at c2', () => ((mc2.counts.get(`mcast/${PORTS.mcast}`) ?? 0) - m0 >= 3 ? 3 : undefined), 1000).catch(() => (mc2.counts.get(`mcast/${PORTS.mcast}`) ?? 0) - m0);
        res.set(`broadcast c1->:${PORTS.bcast}`, { ok: b === 3, detail: `${b}/3` });
        res.set(`multicast c1->${MCAST_GROUP}`, { ok: m === 3, detail: `${m}/3` });

        const n6 = ping(t, c1.ns, c2.ip6, 3);
        res.set('ping6 c1->c2', { ok: n6 === 3, detail: `${n6}/3` });

        const after = await dpx.counts();
        const bpfAfter = await dp.stats();
        for (const row of ROWS) {
          const r = res.get(row.label)!;
          const d = deltaCounts(before, after, row.kinds);
          const shown = r.ok ? 'ok' : 'blocked';
          const dpOk = row.dp[mode] === 'none' ? d.frames === 0 : d.frames > 0;
          cells.set(`${row.label}|${mode}`, {
            ok: r.ok,
            detail: r.detail,
            dpFrames: d.frames,
            dpDropped: d.dropped,
            asExpected: shown === row.expect[mode] && dpOk,
          });
        }
        // Per-mode datapath counters (both pairs, both directions).
        const sum = (name: 'to_dp' | 'copy' | 'from_dp' | 'to_peer' | 'drop') => {
          let v = 0n;
          for (const s of bpfAfter.pairs) {
            const b0p = bpfBefore.pairs.find((x) => x.id === s.id);
            for (const dir of ['to_wl', 'from_wl'] as const) v += s.counters[dir][name].packets - (b0p?.counters[dir][name].packets ?? 0n);
          }
          return String(v);
        };
        const inj = String(bpfAfter.global.drop_inject - bpfBefore.global.drop_inject);
        summary.push([
          mode, sum('to_peer'), sum('to_dp'), sum('copy'), sum('from_dp'), inj,
          String(after.rx - after.ignored - (before.rx - before.ignored)), String(after.sent - before.sent), String(after.dropped - before.dropped),
        ]);
      }
    } finally {
      dp.close();
    }

    // ---- the tables
    const mismatches: string[] = [];
    const rows = ROWS.map((row) => [
      row.label,
      ...MODES.map((mode) => {
        const c = cells.get(`${row.label}|${mode}`)!;
        if (!c.asExpected) mismatches.push(`${row.label} in ${mode}: ${c.ok ? 'ok' : 'blocked'} ${c.detail}, DP saw ${c.dpFrames}`);
        const dpText = c.dpFrames === 0 ? 'dp -' : `dp ${c.dpFrames}${c.dpDropped ? ` (${c.dpDropped} dropped)` : ''}`;
        return `${c.ok ? 'ok' : 'BLOCKED'} ${c.detail}, ${dpText}${c.asExpected ? '' : ' (!)'}`;
      }),
    ]);
    const lines: string[] = [];
    lines.push('');
    lines.push(...table(['traffic', 'BYPASS', 'TAP', `FWD (${dpName} ${real ? 'denies' : 'drops'} port ${PORTS.blocked})`], rows));
    lines.push('');
    lines.push(`'dp N': frames of that traffic ${real ? dpName : 'the stub DP'} read on vth-neuv (TAP: copies; FWD: the frames themselves${real ? '; from the sessions it lists' : ''}); 'dp -': none, it bypassed the DP.`);
    lines.push('');
    lines.push(...table(['mode', 'to_peer', 'to_dp', 'copy', 'from_dp', 'drop_inject', 'dp read', 'dp wrote', 'dp dropped'], summary, ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r']));
    lines.push('');
    lines.push('Datapath counters (both pairs, both directions): to_peer = forwarded vex<->vin directly; to_dp = sent to the DP (FWD);');
    lines.push('copy = TAP copies to the DP; from_dp = returned by the DP and delivered; drop_inject = frames the DP wrote back in TAP, dropped.');
    lines.push('');
    out(lines.join('\n'));

    for (const p of pairs) await release({ pinRoot, target: { pid: p.pid }, enforcer: t.enforcer });
    out('released both containers (their eth0 is the original port again)');
    cli(['--netns', t.enforcer, '--bpffs', pinRoot, 'unload']);
    out('unloaded the datapath');
    verdict = mismatches.length
      ? `NOT as expected:\n  ${mismatches.join('\n  ')}`
      : `all as expected (${((Date.now() - started) / 1000).toFixed(1)} s)`;
    return { ok: mismatches.length === 0, table: lines, mismatches };
  } finally {
    offSignals();
    runCleanups();
    out('removed every namespace, interface and pin of the demo');
    if (verdict) out(verdict);
  }
}
