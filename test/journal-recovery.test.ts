/**
 * The journal survives its own corruption (src/intercept/salvage.ts,
 * src/intercept/marker.ts). `intercept` is SIGKILLed before each of its
 * steps, then its journal record is truncated, deleted or overwritten with
 * garbage: `show --check` reports it (its marker is looked for in every
 * netns, so also a deleted record while the original port is still in the
 * container), `repair` brings it to rest from the kernel's marker
 * (rolled back; killed at the commit point, whole and recorded again), the
 * container answers ping again with its link, addresses and routes as
 * before intercept, and nothing is left: no pair, no port in the enforcer
 * netns, no record, no marker.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { leakChecks, requireKernel } from './helpers';
import { containerState, linkNames, makeTopology, TestTopology } from './topology';
import { HOST_IP4, HOST_IP6, ping } from '../harness/topology';
import { INTERCEPT_STEPS } from '../src/intercept';
import { journalDir } from '../src/intercept/journal';
import { decodeMarker, encodeMarker, Marker, markerKey } from '../src/intercept/marker';

const IDLE_ENFORCER = ['lo', 'vbr-neuv', 'vth-neuv'];
const DAMAGE = ['truncated', 'deleted', 'garbage'] as const;
/**
 * The steps an intercept is killed before, per kind of damage. make test: every step for a truncated record,
 * and for the other two every third step (a different third each, so that together the three kinds still
 * cover every step) plus the steps where what repair must do changes (mark, move-vex, the last);
 * make soak (NEUV_BPF_SOAK=1): every step for every kind.
 */
function stepsFor(how: (typeof DAMAGE)[number]): ReadonlyArray<(typeof INTERCEPT_STEPS)[number]> {
  if (process.env.NEUV_BPF_SOAK === '1' || how === 'truncated') return INTERCEPT_STEPS;
  const k = DAMAGE.indexOf(how);
  const always = new Set<(typeof INTERCEPT_STEPS)[number]>(['mark', 'move-vex', INTERCEPT_STEPS[INTERCEPT_STEPS.length - 1]!]);
  return INTERCEPT_STEPS.filter((s, i) => i % 3 === k || always.has(s));
}
type Damage = (typeof DAMAGE)[number];

describe('intercept marker (unit)', function () {
  const m: Marker = {
    key: markerKey('/sys/fs/bpf/neuv', 4026531840), ctrIno: 4026532001, tag: 'n1db', port: 'eth0', ifindex: 2, mac: '12:45:b7:4d:26:93',
    up: true, addrGenMode: 'eui64', addrs: ['10.77.0.2/24', 'fd77::2/64', 'fe80::1045:b7ff:fe4d:2693/64'], gateways: ['4:10.77.0.1', '6:fd77::1'], partial: false,
  };

  it('round-trips through an alias of at most 255 bytes, and only for its own key', function () {
    const s = encodeMarker(m);
    assert.ok(Buffer.byteLength(s) <= 255);
    assert.deepEqual(decodeMarker(s, m.key), m);
    assert.equal(decodeMarker(s, markerKey('/sys/fs/bpf/other', 4026531840)), undefined);
    assert.equal(decodeMarker('my own alias', m.key), undefined);
  });

  it('leaves out gateways, then addresses, from the end when they do not fit, and says so', function () {
    const many = { ...m, addrs: Array.from({ length: 12 }, (_, i) => `fd77:1234:5678:9abc::${i + 1}/64`) };
    const s = encodeMarker(many);
    assert.ok(Buffer.byteLength(s) <= 255, `${Buffer.byteLength(s)} bytes`);
    const d = decodeMarker(s, m.key)!;
    assert.equal(d.partial, true);
    assert.deepEqual(d.gateways, []);
    assert.deepEqual(d.addrs, many.addrs.slice(0, d.addrs.length));
    assert.ok(d.addrs.length >= 4);
  });
});

function records(tt: TestTopology): string[] {
  const d = journalDir(tt.pins);
  return fs.existsSync(d) ? fs.readdirSync(d) : [];
}

function damage(tt: TestTopology, how: Damage): void {
  const [f] = records(tt);
  assert.ok(f, 'a journal record to damage');
  const p = path.join(journalDir(tt.pins), f);
  if (how === 'deleted') fs.rmSync(p);
  else if (how === 'truncated') fs.truncateSync(p, Math.floor(fs.statSync(p).size / 2));
  else fs.writeFileSync(p, Buffer.from('\u0000\u00ff garbage {"version":'));
}

/** What the container's network is: its link (with its alias), addresses and routes. */
function network(tt: TestTopology, c: (typeof tt.c)[0]): unknown {
  const s = containerState(tt.t, c!) as { link: unknown; addrs: unknown; routes4: unknown; routes6: unknown };
  return { link: s.link, addrs: s.addrs, routes4: s.routes4, routes6: s.routes6 };
}

describe('intercept killed at every step, its journal record then lost (kernel)', function () {
  this.timeout(1800000);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  for (const how of DAMAGE) {
    it(`record ${how}: show --check reports it, repair restores the container's network from the kernel`, function () {
      const tt = makeTopology({ containers: 1 });
      const c1 = tt.c[0]!;
      const before = network(tt, c1);
      const args = ['intercept', '--container-netns', c1.path, '--mode', 'tap'];
      for (const s of stepsFor(how)) {
        const point = `intercept:before-${s}`;
        const k = tt.run(args, { NEUV_BPF_FAULT: `crash@${point}` });
        assert.equal(k.code, -1, `${point}: not killed: ${k.stderr}`);
        damage(tt, how);
        // Before 'mark' nothing changed: a deleted record leaves nothing to see. From 'mark' on the marker is
        // found wherever the original port is (the container's netns before 'move-vex', the enforcer's after).
        const seen = !(how === 'deleted' && s === 'mark');
        const chk = tt.run(['show', '--check']);
        if (seen) {
          assert.equal(chk.code, 1, `${point}: show --check passes with the record ${how}: ${chk.stdout}`);
          assert.match(chk.stdout + chk.stderr, how === 'deleted' ? /its journal record is missing/ : /its journal record \d+-eth0\.json cannot be read/, point);
        }
        const rep = tt.run(['repair']);
        assert.equal(rep.code, 0, `${point}: repair: ${rep.stderr}${rep.stdout}`);
        if (s === 'mark') {
          if (how !== 'deleted') assert.match(rep.stdout, /removed the journal record .* which could not be read \(nothing of its intercept/, point);
        } else if (s === 'commit') {
          assert.match(rep.stdout, /recorded the interception of eth0 of netns .* again from the kernel/, point);
          assert.equal(ping(tt.t, c1.ns, HOST_IP4, 1), 1, `${point}: ping while intercepted`);
          const rel = tt.run(['release', '--container-netns', c1.path]);
          assert.equal(rel.code, 0, `${point}: release: ${rel.stderr}`);
        } else {
          assert.match(rep.stdout, new RegExp(`fixed: rolled back a half-done intercept of eth0 of netns ${c1.path} from the kernel's marker`), `${point}: ${rep.stdout}`);
        }
        assert.deepEqual(network(tt, c1), before, `${point}: the container's network after repair`);
        assert.equal(ping(tt.t, c1.ns, HOST_IP4, 1), 1, `${point}: ping`);
        assert.equal(ping(tt.t, c1.ns, HOST_IP6, 1), 1, `${point}: ping6`);
        assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER, `${point}: the enforcer netns after repair`);
        assert.deepEqual(records(tt), [], `${point}: no journal record left`);
        const clean = tt.run(['show', '--check', '--json']);
        assert.equal(clean.code, 0, `${point}: show --check after repair: ${clean.stderr}${clean.stdout}`);
        assert.deepEqual((JSON.parse(clean.stdout) as { pairs: unknown[] }).pairs, [], `${point}: no pair`);
      }
    });
  }

  it('intercept and release of the container recover a lost half-done intercept first', function () {
    const tt = makeTopology({ containers: 1 });
    const c1 = tt.c[0]!;
    const before = network(tt, c1);
    const args = ['intercept', '--container-netns', c1.path, '--mode', 'tap'];
    // The original port still in the container, the record deleted: only the marker says what happened.
    assert.equal(tt.run(args, { NEUV_BPF_FAULT: 'crash@intercept:before-tmpmac' }).code, -1);
    damage(tt, 'deleted');
    const again = tt.run(args);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^first: rolled back a half-done intercept of eth0 .* from the kernel's marker \(its journal record is missing\)/);
    assert.equal(ping(tt.t, c1.ns, HOST_IP4, 1), 1, 'ping while intercepted');
    const rel = tt.run(['release', '--container-netns', c1.path]);
    assert.equal(rel.code, 0, rel.stderr);
    // Killed with the original port in the enforcer netns and the record garbage: release finishes it.
    assert.equal(tt.run(args, { NEUV_BPF_FAULT: 'crash@intercept:before-addresses' }).code, -1);
    damage(tt, 'garbage');
    const rel2 = tt.run(['release', '--container-netns', c1.path]);
    assert.equal(rel2.code, 0, rel2.stderr);
    assert.match(rel2.stdout, /rolled back a half-done intercept of eth0 .* from the kernel's marker \(its journal record \d+-eth0\.json cannot be read\)/);
    assert.deepEqual(network(tt, c1), before);
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER);
    assert.deepEqual(records(tt), []);
    assert.equal(tt.run(['show', '--check']).code, 0);
  });
});
