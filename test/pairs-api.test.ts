/**
 * Kernel suite for the pairs API (Datapath, src/pairs/datapath.ts): each
 * operation in its netns, typed errors, the RCU grace period after deletes,
 * and the vex program against a pair flipping modes from another process.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { cli as runCli, makeNetns, makePinRoot, onCleanup, requireKernel, sh, TIME_SCALE, leakChecks } from './helpers';
import { ConflictError, NotFoundError, UsageError } from '../src/errors';
import { configureLogging } from '../src/log';
import { Datapath } from '../src/pairs';
import { rcuGraceWaits } from '../src/bpf';
import { raceTestRun } from './race';
import { addVeths, ifindexOf, MAC1, MAC2, u32Bytes } from './pairs-fixture';
import { mapPinPath, openProg } from '../src/pins';

// ---------------------------------------------------------------- the API

describe('Datapath API (kernel)', function () {
  before(function () {
    requireKernel(this);
    configureLogging('warn', false);
  });
  leakChecks();

  it('runs each operation inside its netns and puts the thread back; typed errors; re-add repairs lost entries', async function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(runCli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    addVeths(ns, 2);
    const home = fs.readlinkSync('/proc/thread-self/ns/net');
    const dp = Datapath.open(pins, { netns: ns.name });
    onCleanup(() => dp.close());
    const spec = { in: 'vin1', ex: 'vex1', mac: MAC1, mode: 'tap' as const };
    const p = await dp.addPair(spec);
    assert.equal(fs.readlinkSync('/proc/thread-self/ns/net'), home, 'back in the original netns');
    assert.equal(p.created, true);
    assert.equal(p.mode, 'tap');
    assert.equal(p.id, ifindexOf(ns, 'vex1') & 0xffff);
    await assert.rejects(dp.addPair({ ...spec, ex: 'vex2' }), (e: unknown) => e instanceof ConflictError && /vin1 is already the vin/.test(e.message));
    await assert.rejects(dp.setMode({ in: 'vin2' }, 'fwd'), (e: unknown) => e instanceof NotFoundError);
    await assert.rejects(dp.addPair({ ...spec, in: 'vin2', ex: 'vex2', mac: '01:00:00:00:00:01' }), (e: unknown) => e instanceof UsageError);
    assert.deepEqual(await dp.setMode({ ex: 'vex1' }, 'fwd'), { id: p.id, in: 'vin1', ex: 'vex1', from: 'tap', to: 'fwd' });
    assert.equal(fs.readlinkSync('/proc/thread-self/ns/net'), home);

    // A crash half way through an add: the vex entry and the ids entry are gone.
    sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(pins, 'ports'), 'key', ...u32Bytes(p.vexIfindex)]);
    sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(pins, 'ids'), 'key', ...u32Bytes(p.id)]);
    assert.equal((await dp.show()).consistent, false);
    const again = await dp.addPair({ in: 'vin1', ex: 'vex1', mac: MAC1 });
    assert.equal(again.created, false);
    assert.equal(again.mode, 'fwd');
    assert.deepEqual(again.repaired.sort(), ['ids entry', 'vex entry']);
    const shown = await dp.show();
    assert.equal(shown.consistent, true, JSON.stringify(shown.pairs[0]?.problems));
    assert.equal(shown.pairs[0]!.vex!.mode, 'fwd');

    const many = await dp.addPairs([{ in: 'vin2', ex: 'vex2', mac: MAC2, id: 9 }]);
    assert.equal(many[0]!.id, 9);
    const d = await dp.delPair({ id: 9 });
    assert.deepEqual(d.detached.sort(), ['vex2', 'vin2']);
    await dp.delPair({ in: 'vin1' });
    assert.deepEqual((await dp.show()).pairs, []);
    assert.equal(fs.readlinkSync('/proc/thread-self/ns/net'), home);
  });

  // A deleted hash element is what the next insert fills in, at once: a program still reading it
  // would read the new key's value (4 drop_role in 1.1 million raw delete-then-insert rounds here,
  // too rare to show in a test of bounded time once each delete costs a grace period). So every
  // change that deleted entries waits for an RCU grace period before it releases the lock.
  it('a change that deleted map entries waits for an RCU grace period before the next change; one that deleted nothing does not', async function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(runCli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    addVeths(ns, 2);
    const dp = Datapath.open(pins, { netns: ns.name });
    onCleanup(() => dp.close());
    const w0 = rcuGraceWaits();
    await dp.addPair({ in: 'vin1', ex: 'vex1', mac: MAC1 });
    await dp.setMode({ in: 'vin1' }, 'tap');
    assert.equal(rcuGraceWaits(), w0, 'add and mode switch delete nothing');
    await dp.delPair({ in: 'vin1' });
    assert.equal(rcuGraceWaits(), w0 + 2, 'pair del waited after the id and before the lock went');
    await dp.addPairs([{ in: 'vin1', ex: 'vex1', mac: MAC1 }, { in: 'vin2', ex: 'vex2', mac: MAC2 }]);
    assert.equal(rcuGraceWaits(), w0 + 2);
    await dp.delPair({ in: 'vin1' });
    await dp.delPair({ in: 'vin2' });
    assert.equal(rcuGraceWaits(), w0 + 6, 'each pair del waited');
  });

  // A plain update of a hash map entry swaps in another element and hands the old one to the next
  // update on that CPU: a program still reading the old vex element then read the vin entry written
  // right after it (seen here before neuv_ports had its lock: 172 and 2 frames in two runs of ~33
  // million, dropped as drop_role). With BPF_F_LOCK updates in place, none.
  it('the vex program never reads another port\'s entry while the pair flips TAP <-> BYPASS from another process', async function () {
    this.timeout(60000);
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(runCli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    addVeths(ns, 1);
    assert.equal(runCli(['--netns', ns.name, '--bpffs', pins, 'pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--mode', 'bypass']).code, 0);
    const prog = openProg(pins, 'vex');
    onCleanup(() => prog.close());
    const frame = Buffer.alloc(64);
    Buffer.from([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0, 0x45]).copy(frame); // IPv4 to the workload MAC
    const { runs, switches } = await raceTestRun(prog, ns.name, ifindexOf(ns, 'vex1'), frame, ['mode', pins, ns.name, 'vin1', '1000'], 5000 * TIME_SCALE);
    const st = JSON.parse(runCli(['--netns', ns.name, '--bpffs', pins, 'stats', '--json']).stdout) as {
      pairs: Array<{ counters: { to_wl: Record<'to_peer' | 'drop', { packets: number }> } }>;
      global: Record<string, number>;
    };
    const c = st.pairs[0]!.counters.to_wl;
    // eslint-disable-next-line no-console
    console.log(`      ${runs} runs of neuv_vex while ${switches} mode switches: to_peer ${c.to_peer.packets}, drop ${c.drop.packets}`);
    assert.ok(switches >= 1000, `only ${switches} switches`);
    assert.equal(c.drop.packets, 0, `dropped (reasons: ${JSON.stringify(st.global)})`);
    assert.equal(st.global.drop_role, 0);
    assert.ok(c.to_peer.packets >= runs, `every run forwarded to the peer (${c.to_peer.packets} of ${runs})`);
  });
});
