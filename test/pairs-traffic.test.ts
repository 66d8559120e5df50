/**
 * Kernel suite for traffic across a pair (harness/pair.ts's three netns):
 * ping in each mode with the counters it moves, `stats --watch`, and a UDP
 * stream that loses and duplicates nothing while the pair flips modes.
 */
import assert from 'node:assert/strict';
import { cli as runCli, cliSpawn, makePinRoot, onCleanup, requireKernel, TIME_SCALE, leakChecks } from './helpers';
import { configureLogging } from '../src/log';
import { Datapath } from '../src/pairs';
import { ping, startUdpStream } from './traffic';
import { makePairTopology } from './topology';

// ---------------------------------------------------------------- traffic

describe('pairs with traffic (kernel)', function () {
  before(function () {
    requireKernel(this);
    configureLogging('warn', false); // the in-process API waits for the CLI's lock: not news
  });
  leakChecks();

  function topo(subnet: string) {
    const t = makePairTopology({ subnet });
    const pins = makePinRoot();
    const c = (args: string[], opts: { input?: string } = {}) => runCli(['--netns', t.enforcer.name, '--bpffs', pins, ...args], opts);
    const l = c(['load']);
    assert.equal(l.code, 0, l.stderr);
    return { t, pins, c };
  }

  interface StatsJson {
    pairs: Array<{ id: number; counters: Record<'to_wl' | 'from_wl', Record<string, { packets: number; bytes: number }>> }>;
    global: Record<string, number>;
  }

  it('ping across a pair in each mode: counters per direction and verdict, drops in DROP, global reasons', function () {
    const { t, c } = topo('10.78.0');
    assert.equal(ping(t.host, t.wlAddr, 2, 0.1), 0, 'no path before the pair');
    const a = c(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--json']);
    assert.equal(a.code, 0, a.stderr);
    const added = JSON.parse(a.stdout) as { id: number; redirectPeer: { vin: boolean; vex: boolean } };
    assert.deepEqual(added.redirectPeer, { vin: true, vex: true }, 'both targets have their peer in another netns');
    const stats = (): StatsJson => JSON.parse(c(['stats', '--json']).stdout) as StatsJson;
    const pkts = (s: StatsJson, d: 'to_wl' | 'from_wl', v: string) => s.pairs.find((p) => p.id === added.id)!.counters[d][v]!.packets;

    assert.equal(ping(t.host, t.wlAddr, 5), 5, 'bypass forwards');
    let s = stats();
    assert.ok(pkts(s, 'to_wl', 'to_peer') >= 5 && pkts(s, 'from_wl', 'to_peer') >= 5, JSON.stringify(s));
    assert.equal(pkts(s, 'to_wl', 'copy'), 0);

    assert.equal(c(['pair', 'mode', '--in', t.vin, 'tap']).code, 0);
    assert.equal(ping(t.host, t.wlAddr, 5), 5, 'tap forwards');
    s = stats();
    assert.ok(pkts(s, 'to_wl', 'copy') >= 5 && pkts(s, 'from_wl', 'copy') >= 5, 'tap copies both directions to the DP');

    assert.equal(c(['pair', 'mode', '--in', t.vin, 'drop']).code, 0);
    assert.equal(ping(t.host, t.wlAddr, 3), 0, 'drop drops');
    s = stats();
    assert.ok(pkts(s, 'to_wl', 'drop') >= 3);
    assert.ok(s.global.drop_mode! >= 3);

    assert.equal(c(['pair', 'mode', '--in', t.vin, 'bypass']).code, 0);
    assert.equal(ping(t.host, t.wlAddr, 3), 3);
    const shown = c(['show']).stdout;
    assert.match(shown, new RegExp(`^\\s*${added.id}\\s+${t.vin} .* bypass\\s+both (tcx|tc)`, 'm'));
  });

  it('stats --watch prints rates: JSON lines with --json, plain blocks when piped; stops cleanly on SIGINT', async function () {
    this.timeout(30000);
    const { t, pins, c } = topo('10.79.0');
    assert.equal(c(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac]).code, 0);
    const watch = async (json: boolean) => {
      const child = cliSpawn(['--netns', t.enforcer.name, '--bpffs', pins, 'stats', '--watch', '--interval', '0.25', ...(json ? ['--json'] : [])]);
      onCleanup(() => child.kill('SIGKILL'));
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      // Printed so far: JSON lines, or blocks of text. The CLI takes seconds to start on a slow
      // (emulated) machine: ping once it prints, and stop it once it printed again after the ping.
      const printed = () => (json ? out.split('\n').filter(Boolean).length : (out.match(/rates over the last/g) ?? []).length);
      const until = async (cond: () => boolean, ms: number) => {
        for (const t0 = Date.now(); !cond() && Date.now() - t0 < ms; ) await new Promise((r) => setTimeout(r, 20));
      };
      await until(() => printed() >= 1 || child.exitCode !== null, 20000 * TIME_SCALE);
      ping(t.host, t.wlAddr, 40, 0.02);
      const n = printed();
      await until(() => printed() >= n + 2 || child.exitCode !== null, 10000 * TIME_SCALE);
      child.kill('SIGINT');
      return { code: await exited, out };
    };
    const j = await watch(true);
    assert.equal(j.code, 0);
    const lines = j.out.trim().split('\n').map((l) => JSON.parse(l) as { interval: number; pairs: Array<{ rates: { to_wl: { to_peer: { packets: number } } } }>; globalRates: object });
    assert.ok(lines.length >= 2, j.out);
    assert.ok(lines.every((l) => l.interval > 0 && l.globalRates));
    assert.ok(lines.some((l) => l.pairs[0]!.rates.to_wl.to_peer.packets > 0), 'a non-zero rate while pinging');
    const p = await watch(false);
    assert.equal(p.code, 0);
    assert.match(p.out, /rates over the last 0\.\d s/);
    assert.doesNotMatch(p.out, /\x1b\[/, 'no terminal control codes when piped');
  });

  it('a UDP stream in both directions loses and duplicates nothing while the pair flips BYPASS <-> TAP 1,000+ times (API) and via the CLI', async function () {
    this.timeout(180000);
    const { t, pins, c } = topo('10.77.0');
    const a = c(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--mode', 'bypass', '--json']);
    assert.equal(a.code, 0, a.stderr);
    const id = (JSON.parse(a.stdout) as { id: number }).id;
    assert.equal(ping(t.host, t.wlAddr, 3), 3);
    const dp = Datapath.open(pins, { netns: t.enforcer.name });
    onCleanup(() => dp.close());
    const statsBefore = await dp.stats();

    // Streams that last until the switching is done: at least 4 s and 1,000 API plus 3 CLI
    // switches, however slow the machine (a loaded host or an emulated VM switches more slowly).
    const rate = 10000;
    const down = await startUdpStream({ senderNs: t.host.name, receiverNs: t.workload.name, to: t.wlAddr, port: 5001, count: 0, rate, idleMs: 1500, untilStopped: true });
    const up = await startUdpStream({ senderNs: t.workload.name, receiverNs: t.host.name, to: t.hostAddr, port: 5002, count: 0, rate, idleMs: 1500, untilStopped: true });
    onCleanup(() => {
      down.kill();
      up.kill();
    });
    let streaming = true;
    void Promise.all([down.sent, up.sent])
      .finally(() => (streaming = false))
      .catch(() => undefined); // the failure itself surfaces through down.result / up.result
    const started = Date.now();

    // CLI switches, one after another, alongside the API loop.
    let cliSwitches = 0;
    const cliLoop = (async () => {
      const modes = ['tap', 'bypass'];
      while (streaming && cliSwitches < 6) {
        const child = cliSpawn(['--netns', t.enforcer.name, '--bpffs', pins, 'pair', 'mode', '--id', String(id), modes[cliSwitches % 2]!]);
        const code = await new Promise<number | null>((r) => child.on('close', r));
        assert.equal(code, 0);
        cliSwitches++;
      }
    })();
    let switches = 0;
    const lat: number[] = [];
    const done = () => switches >= 1000 && cliSwitches >= 3 && Date.now() - started >= 4000;
    // (Within the receivers' own limit, 120 s x TIME_SCALE: startUdpStream's timeoutMs.)
    while (streaming && !done() && Date.now() - started < 100000 * TIME_SCALE) {
      const t0 = process.hrtime.bigint();
      await dp.setMode({ in: t.vin }, switches % 2 === 0 ? 'tap' : 'bypass');
      lat.push(Number(process.hrtime.bigint() - t0) / 1000);
      switches++;
      await new Promise((r) => setImmediate(r)); // let the children's pipes be read
    }
    down.stop();
    up.stop();
    await cliLoop;
    await dp.setMode({ id }, 'bypass');
    const [rd, ru] = await Promise.all([down.result, up.result]);
    lat.sort((x, y) => x - y);
    // eslint-disable-next-line no-console
    console.log(`      ${switches} API mode switches (median ${lat[lat.length >> 1]!.toFixed(0)} µs) + ${cliSwitches} CLI switches during ${rd.sent} + ${ru.sent} datagrams at ${rate}/s: down ${JSON.stringify(rd)}, up ${JSON.stringify(ru)}`);
    assert.ok(switches >= 1000, `only ${switches} switches`);
    assert.ok(cliSwitches >= 3, `only ${cliSwitches} CLI switches`);
    // The datapath's own counters first: every datagram forwarded, none dropped across the switches.
    const s = await dp.stats();
    const b = statsBefore.pairs.find((p) => p.id === id)!.counters;
    const n = s.pairs.find((p) => p.id === id)!.counters;
    for (const [d, sent] of [['to_wl', rd.sent], ['from_wl', ru.sent]] as const) {
      assert.ok(n[d].copy.packets - b[d].copy.packets > 0n, `${d}: TAP copied some datagrams`);
      assert.ok(n[d].to_peer.packets - b[d].to_peer.packets >= BigInt(sent), `${d}: all ${sent} forwarded (${n[d].to_peer.packets - b[d].to_peer.packets})`);
      assert.equal(n[d].drop.packets - b[d].drop.packets, 0n, `${d}: nothing dropped`);
    }
    // Then at the receivers. A datagram the receiving socket dropped for a full buffer (its
    // process starved of CPU on a busy machine; Udp RcvbufErrors of that netns) was delivered
    // by the path: it is reported, not counted as lost by the datapath.
    for (const [name, r] of [['down', rd], ['up', ru]] as const) {
      assert.ok(r.sent >= rate, `${name}: the stream ran (${r.sent} sent)`);
      assert.equal(r.duplicated, 0, `${name}: no duplicate`);
      assert.equal(r.unique + r.socketDrops, r.sent, `${name}: every datagram arrived or was dropped by the full receiving socket: ${JSON.stringify(r)}`);
    }
  });
});

// ---------------------------------------------------------------- scale
