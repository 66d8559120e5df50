/**
 * Unit tests (no kernel): src/layout/: the layouts generated from the
 * object's BTF (scripts/gen-layout.ts) and the map codecs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  decodePort, encodePort, Role, Mode, parseMode, encodeConfig, decodeConfig, addStats, emptyStats, encodeStats, STRUCTS, StructDecl,
  decodeId, encodeId, decodeHome, encodeHome, decodeFlowKey, encodeFlowKey, decodeFlow, encodeFlow, decodeTrace, encodeTrace,
  VERDICT_NAMES, REASON_NAMES, DIR_NAMES, MODE_NAMES, HOOK_NAMES, Verdict, VERDICT_COUNT, REASON_COUNT,
} from '../src/layout';

const ROOT = path.resolve(__dirname, '..', '..');
const GEN = path.join(ROOT, 'build', 'gen', 'scripts', 'gen-layout.js');

/** What scripts/gen-layout.ts writes for an object. */
function generate(obj: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gen-layout-'));
  try {
    const out = path.join(dir, 'generated.ts');
    const r = spawnSync(process.execPath, [GEN, obj, out], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return fs.readFileSync(out, 'utf8');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('layouts generated from BTF (scripts/gen-layout.ts)', function () {
  this.timeout(60000); // a node process per object
  it('src/layout/generated.ts is what the generator makes of build/neuv.bpf.o', function () {
    const committed = fs.readFileSync(path.join(ROOT, 'src', 'layout', 'generated.ts'), 'utf8');
    assert.equal(generate(path.join('build', 'neuv.bpf.o')), committed, 'src/layout/generated.ts is stale: make build rewrites it');
  });
  it('a field or flag changed in bpf/neuv.h reaches the layouts with no TypeScript edit (the drift fixtures)', function () {
    // build/fixtures/drift.bpf.o: struct neuv_port with a __u32 added_field after the lock.
    const port = /export const PortDecl: StructDecl = \{[^]*?\n\};/.exec(generate(path.join('build', 'fixtures', 'drift.bpf.o')))![0];
    assert.match(port, /size: 28,/);
    assert.match(port, /\{ name: 'added_field', offset: 24, size: 4 \}/);
    // build/fixtures/drift-flag.bpf.o: NEUV_F_SELF_PEER moved from bit 3 to bit 4.
    assert.match(generate(path.join('build', 'fixtures', 'drift-flag.bpf.o')), /export const PortFlag = \{[^}]*SELF_PEER: 0x10,/);
  });
  it('names follow the enums: lower case, indexed by value', function () {
    assert.equal(VERDICT_NAMES.length, VERDICT_COUNT);
    assert.equal(REASON_NAMES.length, REASON_COUNT);
    assert.equal(VERDICT_NAMES[Verdict.FLOW_DROP], 'flow_drop');
    assert.deepEqual([...DIR_NAMES], ['to_wl', 'from_wl']);
    assert.equal(MODE_NAMES[Mode.BYPASS], 'bypass');
    assert.equal(HOOK_NAMES[3], 'vbr');
  });
});

/**
 * Every struct with a codec pair: its bytes back through decode and encode.
 * Random bytes in, the same bytes out, but for members nobody writes (padding,
 * the spin lock) and what the codec normalises: a member a codec forgets (a
 * field added to bpf/neuv.h and not to codecs.ts) comes back zero and fails.
 */
const ROUND_TRIPS: Record<string, { rt: (b: Buffer) => Buffer; unwritten: string[] }> = {
  neuv_port: { rt: (b) => encodePort(decodePort(b)), unwritten: ['pad', 'lock'] },
  neuv_id: { rt: (b) => encodeId(decodeId(b)), unwritten: [] },
  neuv_config: { rt: (b) => encodeConfig(decodeConfig(b)), unwritten: [] },
  neuv_home: { rt: (b) => encodeHome(decodeHome(b)), unwritten: ['pad'] },
  neuv_flow_key: { rt: (b) => encodeFlowKey(decodeFlowKey(b)), unwritten: ['pad'] },
  neuv_flow: { rt: (b) => encodeFlow(decodeFlow(b)), unwritten: ['pad'] },
  neuv_trace: { rt: (b) => encodeTrace(decodeTrace(b)), unwritten: ['pad'] },
  neuv_stats: { rt: (b) => encodeStats(addStats(emptyStats(), b)), unwritten: [] },
};
/** Structs only read (counters the programs write) or only inside another (checked through it). */
const READ_ONLY_OR_INNER = ['neuv_ctr', 'neuv_decision', 'neuv_flow_stats', 'neuv_global'];

const memberOff = (struct: string, member: string) => STRUCTS.find((s) => s.name === struct)!.members.find((m) => m.name === member)!.offset;
/** struct neuv_trace's d.has_id */
const hasId = memberOff('neuv_trace', 'd') + memberOff('neuv_decision', 'has_id');

describe('codecs cover every member', function () {
  it('every struct of bpf/neuv.h has a round trip here or is listed as read-only', function () {
    const missing = STRUCTS.map((s) => s.name).filter((n) => !(n in ROUND_TRIPS) && !READ_ONLY_OR_INNER.includes(n));
    assert.deepEqual(missing, [], 'a new struct in bpf/neuv.h: give it a codec in src/layout/codecs.ts and a round trip here');
  });
  for (const [name, { rt, unwritten }] of Object.entries(ROUND_TRIPS)) {
    it(`struct ${name}: every member survives decode then encode`, function () {
      const decl: StructDecl = STRUCTS.find((s) => s.name === name)!;
      for (let i = 0; i < 20; i++) {
        const b = randomBytes(decl.size);
        for (const m of decl.members) if (unwritten.includes(m.name)) b.fill(0, m.offset, m.offset + m.size);
        if (name === 'neuv_trace') b[hasId]! &= 1; // a boolean
        const out = rt(b);
        assert.equal(out.length, decl.size);
        for (const m of decl.members) {
          assert.equal(out.subarray(m.offset, m.offset + m.size).toString('hex'), b.subarray(m.offset, m.offset + m.size).toString('hex'), `struct ${name}.${m.name}: lost by the codec`);
        }
      }
    });
  }
});

describe('codecs', function () {
  it('port entries round-trip and match the C layout byte for byte', function () {
    const p = { peerIfindex: 0x01020304, flags: 3, id: 0xbeef, role: Role.VEX, mode: Mode.TAP, mac: Buffer.from([2, 0x42, 0xac, 0x11, 0, 2]) };
    const b = encodePort(p);
    assert.equal(b.toString('hex'), '04030201' + '03000000' + 'efbe' + '02' + '02' + '0242ac110002' + '0000' + '00000000' /* lock */);
    assert.deepEqual(decodePort(b), p);
  });
  it('config and stats round-trip; per-CPU stats add up', function () {
    const c = { dpIfindex: 10000000, flags: 0, traceUntil: 123n };
    assert.deepEqual(decodeConfig(encodeConfig(c)), c);
    const s = emptyStats();
    s[1]![2] = { packets: 5n, bytes: 500n };
    const total = addStats(addStats(emptyStats(), encodeStats(s)), encodeStats(s));
    assert.deepEqual(total[1]![2], { packets: 10n, bytes: 1000n });
    assert.deepEqual(total[0]![0], { packets: 0n, bytes: 0n });
  });
  it('parses modes', function () {
    assert.equal(parseMode('fwd'), Mode.FWD);
    assert.equal(parseMode('TAP'), Mode.TAP);
    assert.equal(parseMode('bypass'), Mode.BYPASS);
    assert.equal(parseMode('drop'), Mode.DROP);
    assert.throws(() => parseMode('none'), /unknown mode 'none'/);
    assert.throws(() => parseMode('reset'), /unknown mode/);
  });
});
