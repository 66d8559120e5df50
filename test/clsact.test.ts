/**
 * Kernel suite: `pair del` removes a clsact qdisc it created only when no
 * filter but ours is left on it. Someone else's filters added after our
 * `pair add` (a u32 rule on ingress, another on egress) survive `pair del`,
 * and so does the qdisc; a clsact carrying nothing else goes. A tcx link of
 * someone else on the port does not keep it (tcx does not hang off the
 * qdisc) and survives its removal.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BPF_TCX_INGRESS, CLONE_NEWNET, closeFd, linkCreate, linkInfo, objGet, pinFd, setns } from '../src/bpf';
import { features } from '../src/features';
import { openProg } from '../src/pins';
import { veth } from '../harness/net';
import { cli, makeNetns, makePinRoot, requireKernel, leakChecks } from './helpers';

/** Runs fn with this thread in the named netns (then back). */
function inNetns<T>(name: string, fn: () => T): T {
  const home = fs.openSync('/proc/self/ns/net', 'r');
  const there = fs.openSync(`/var/run/netns/${name}`, 'r');
  try {
    setns(there, CLONE_NEWNET, name);
    try {
      return fn();
    } finally {
      setns(home, CLONE_NEWNET, 'the original netns');
    }
  } finally {
    fs.closeSync(there);
    fs.closeSync(home);
  }
}

describe('pair del and a clsact shared since (kernel, tc attach)', function () {
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it("keeps the clsact it created while others' filters hang off it (ingress or egress); removes it otherwise", function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    const c = (args: string[]) => cli(['--netns', ns.name, '--bpffs', pins, ...args], { env: { NEUV_BPF_ATTACH: 'tc' } });
    const ok = (args: string[]) => {
      const r = c(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      return r;
    };
    ok(['load']);
    for (const i of [1, 2, 3]) {
      veth({ ns, name: `vin${i}` }, { ns, name: `wl${i}` });
      veth({ ns, name: `vex${i}` }, { ns, name: `h${i}` });
    }
    const tc = (...a: string[]) => ns.exec('tc', a);
    const qdisc = (dev: string) => /qdisc clsact/.test(tc('qdisc', 'show', 'dev', dev));
    for (const i of [1, 2, 3]) ok(['pair', 'add', '--in', `vin${i}`, '--ex', `vex${i}`, '--mac', `02:00:00:00:00:0${i}`]);
    for (const d of ['vin1', 'vex1', 'vin2', 'vex2', 'vin3', 'vex3']) assert.ok(qdisc(d), `pair add created a clsact on ${d}`);

    // Others' filters, after our pair add: pair 1 on vin1 ingress and vex1 egress; pair 2 on vex2 egress only.
    tc('filter', 'add', 'dev', 'vin1', 'ingress', 'pref', '200', 'protocol', 'ip', 'u32', 'match', 'u32', '0', '0', 'flowid', '1:1');
    tc('filter', 'add', 'dev', 'vex1', 'egress', 'pref', '300', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0', 'flowid', '1:1');
    tc('filter', 'add', 'dev', 'vex2', 'egress', 'pref', '400', 'protocol', 'ip', 'u32', 'match', 'u32', '0', '0', 'flowid', '1:1');

    const del = (i: number) => JSON.parse(ok(['pair', 'del', '--in', `vin${i}`, '--json']).stdout) as { detached: string[]; qdiscsRemoved: string[] };
    const d1 = del(1);
    assert.deepEqual(d1.detached.sort(), ['vex1', 'vin1']);
    assert.deepEqual(d1.qdiscsRemoved, [], 'both clsacts of pair 1 carry a filter of someone else');
    const d2 = del(2);
    assert.deepEqual(d2.qdiscsRemoved, ['vin2'], "vin2's clsact carries only ours; vex2's has an egress filter");
    const d3 = del(3);
    assert.deepEqual(d3.qdiscsRemoved.sort(), ['vex3', 'vin3']);

    for (const d of ['vin1', 'vex1', 'vex2']) assert.ok(qdisc(d), `the clsact on ${d} stays`);
    for (const d of ['vin2', 'vin3', 'vex3']) assert.ok(!qdisc(d), `the clsact on ${d} is gone`);
    // The others' filters are intact; ours are gone.
    assert.match(tc('filter', 'show', 'dev', 'vin1', 'ingress'), /pref 200 u32/);
    assert.match(tc('filter', 'show', 'dev', 'vex1', 'egress'), /pref 300 u32/);
    assert.match(tc('filter', 'show', 'dev', 'vex2', 'egress'), /pref 400 u32/);
    assert.doesNotMatch(tc('filter', 'show', 'dev', 'vin1', 'ingress'), /handle 0x4e56/);
    assert.doesNotMatch(tc('filter', 'show', 'dev', 'vex1', 'ingress'), /handle 0x4e56/);
    const chk = c(['show', '--check']);
    assert.equal(chk.code, 0, chk.stderr);
  });

  it("someone else's tcx link on the port survives the removal of our clsact (tcx does not hang off the qdisc)", function () {
    if (!features().tcx) this.skip();
    const ns = makeNetns();
    const pins = makePinRoot();
    const theirs = makePinRoot();
    fs.mkdirSync(theirs, { mode: 0o700 });
    const c = (args: string[]) => cli(['--netns', ns.name, '--bpffs', pins, ...args], { env: { NEUV_BPF_ATTACH: 'tc' } });
    assert.equal(c(['load']).code, 0);
    veth({ ns, name: 'vin1' }, { ns, name: 'wl1' }, { up: false });
    veth({ ns, name: 'vex1' }, { ns, name: 'h1' }, { up: false });
    const add = c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', '02:00:00:00:00:01']);
    assert.equal(add.code, 0, add.stderr);
    // Another tool's tcx link on vin1 (here: our vin program, linked and pinned elsewhere).
    const pin = path.join(theirs, 'link_vin1');
    const ifindex = inNetns(ns.name, () => {
      const idx = (JSON.parse(ns.ip('-j', 'link', 'show', 'dev', 'vin1')) as Array<{ ifindex: number }>)[0]!.ifindex;
      const p = openProg(pins, 'vin');
      try {
        const l = linkCreate(p.fd, idx, BPF_TCX_INGRESS, 'vin1 (theirs)');
        try {
          pinFd(l, pin);
        } finally {
          closeFd(l);
        }
      } finally {
        p.close();
      }
      return idx;
    });
    const del = JSON.parse(c(['pair', 'del', '--in', 'vin1', '--json']).stdout) as { qdiscsRemoved: string[] };
    assert.deepEqual(del.qdiscsRemoved.sort(), ['vex1', 'vin1'], 'no tc filter was left on either clsact');
    assert.doesNotMatch(ns.exec('tc', ['qdisc', 'show', 'dev', 'vin1']), /clsact/);
    const fd = objGet(pin);
    try {
      assert.equal(linkInfo(fd).ifindex, ifindex, 'their tcx link is still attached to vin1');
    } finally {
      closeFd(fd);
    }
  });
});
