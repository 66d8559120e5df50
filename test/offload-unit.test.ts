/**
 * Unit: the automatic offload rule (src/offload/rule.ts): parsed and read
 * back, bad rules refused with one line naming the key, and which DP
 * sessions it takes (decideSession).
 */
import assert from 'node:assert/strict';
import { DEFAULT_RULE, decideSession, parseOffloadRule, ruleText } from '../src/offload';
import type { DpSession } from '../src/dp/client';
import { UsageError } from '../src/errors';

const session = (o: Partial<DpSession> = {}): DpSession => ({
  id: 1, epMac: '02:00:00:00:00:01', etherType: 0x0800, clientMac: '02:00:00:00:00:02', serverMac: '02:00:00:00:00:01',
  clientIp: '10.0.0.2', serverIp: '10.0.0.1', clientPort: 40000, serverPort: 80, ipProto: 6, clientPkts: 5, serverPkts: 5,
  clientBytes: 500, serverBytes: 500, clientState: 1, serverState: 1, idle: 0, age: 1, application: 0, policyId: 0, policyAction: 2, flags: 0,
  ...o,
});

describe('offload rule (unit)', function () {
  it('parses every key, defaults the rest, reads back its own text; off is no rule', function () {
    const r = parseOffloadRule('after=20,oneway,ports=80:443:8000-8100,apps=1001,proto=tcp,deny=no,idle=5.5,recheck=2,every=50')!;
    assert.deepEqual(r, { after: 20, oneway: true, ports: [[80, 80], [443, 443], [8000, 8100]], apps: [1001], protos: [6], deny: false, idleS: 5.5, recheckS: 2, everyMs: 50 });
    assert.deepEqual(parseOffloadRule(ruleText(r)), r);
    assert.deepEqual(parseOffloadRule('after=1'), DEFAULT_RULE);
    assert.equal(parseOffloadRule('off'), undefined);
  });

  it('refuses bad rules with one line naming the key', function () {
    for (const [t, re] of [
      ['', /is empty/],
      ['after=0', /--offload after "0" is out of range/],
      ['after=x', /--offload after "?x"? is not an integer/],
      ['color=red', /unknown key 'color'/],
      ['after=2,after=3', /'after' given twice/],
      ['ports=80-70', /ends before it starts/],
      ['ports=70000', /out of range/],
      ['proto=sctp', /not tcp or udp/],
      ['deny=maybe', /not yes or no/],
      ['oneway=1', /takes no value/],
      ['idle', /needs a value/],
      ['every=1', /out of range/],
    ] as const) {
      assert.throws(() => parseOffloadRule(t), (e: Error) => e instanceof UsageError && re.test(e.message) && !e.message.includes('\n'), t);
    }
  });

  it('takes decided sessions only: allowed after N each way (TCP established), denied ones, the ports and apps asked', function () {
    const r = parseOffloadRule('after=3')!;
    assert.equal(decideSession(session(), r), 'allow');
    assert.equal(decideSession(session({ serverPkts: 2 }), r), undefined, 'fewer than N from the server');
    assert.equal(decideSession(session({ clientPkts: 2 }), r), undefined, 'fewer than N from the client');
    assert.equal(decideSession(session({ serverState: 3 }), r), undefined, 'TCP not established');
    assert.equal(decideSession(session({ clientState: 4 }), r), undefined, 'TCP closing');
    assert.equal(decideSession(session({ ipProto: 17, serverPkts: 0, clientState: 0, serverState: 0 }), r), undefined, 'one-way UDP without oneway');
    assert.equal(decideSession(session({ ipProto: 17, serverPkts: 0, clientState: 0, serverState: 0 }), parseOffloadRule('after=3,oneway')!), 'allow');
    assert.equal(decideSession(session({ policyAction: 7, clientPkts: 1, serverPkts: 0 }), r), 'deny', 'denied: at once');
    assert.equal(decideSession(session({ policyAction: 7 }), parseOffloadRule('deny=no')!), undefined);
    for (const a of [3, 4, 5]) assert.equal(decideSession(session({ policyAction: a }), r), undefined, `check action ${a}: not decided yet`);
    assert.equal(decideSession(session({ policyAction: 6 }), r), 'allow', 'violate (monitor mode) passes');
    assert.equal(decideSession(session({ flags: 0x2 }), r), undefined, "the DP's TAP");
    assert.equal(decideSession(session({ flags: 0x101 }), r), 'allow', 'temporarily open (no policy yet): taken, checked again at the recheck deadline');
    assert.equal(decideSession(session({ etherType: 0x86dd }), r), undefined, 'IPv6: the flow map is IPv4');
    assert.equal(decideSession(session({ ipProto: 1 }), r), undefined, 'ICMP');
    assert.equal(decideSession(session(), parseOffloadRule('ports=443:8000-8100')!), undefined);
    assert.equal(decideSession(session({ serverPort: 8080 }), parseOffloadRule('ports=443:8000-8100')!), 'allow');
    assert.equal(decideSession(session(), parseOffloadRule('apps=1001')!), undefined);
    assert.equal(decideSession(session({ application: 1001 }), parseOffloadRule('apps=1001')!), 'allow');
    assert.equal(decideSession(session(), parseOffloadRule('proto=udp')!), undefined);
  });
});
