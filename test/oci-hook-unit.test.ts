/**
 * The OCI hook's input (src/hook/state.ts): the runtime's state JSON on
 * stdin, read as hostile input. Pure: no kernel, no runtime.
 */
import assert from 'node:assert/strict';
import { UsageError } from '../src/errors';
import { MODE_ANNOTATION, PORT_ANNOTATION, modeOf, parseOciState, portOf, stageOf } from '../src/hook';
import { parseApiEvent, parseEvent, parseInspect } from '../src/runtime';

const ID = 'f05d9389890dda8eed456e60b37a9e2efe7aa620803655e7ab2b7ca088624f90';
/** What podman 4.3 (runc 1.1.5) writes at createRuntime (test/oci-hook.test.ts sees the same). */
const CREATE = {
  ociVersion: '1.0.2-dev', id: ID, status: 'creating', pid: 18752,
  bundle: `/var/lib/containers/storage/overlay-containers/${ID}/userdata`,
  annotations: { 'io.container.manager': 'libpod', [MODE_ANNOTATION]: 'drop' },
};
/** ... and at poststop: no pid. */
const STOP = { ociVersion: '1.0.2-dev', id: ID, status: 'stopped', bundle: CREATE.bundle, annotations: { [MODE_ANNOTATION]: 'drop' } };

const bad = (v: unknown, re: RegExp) => {
  const text = typeof v === 'string' ? v : JSON.stringify(v);
  assert.throws(() => parseOciState(text), (e: unknown) => e instanceof UsageError && re.test(e.message) && !e.message.includes('\n'), `${text.slice(0, 80)} -> ${re}`);
};

describe('oci-hook: the OCI state (unit)', function () {
  it('podman\'s states at createRuntime and poststop: their stage, mode and port', function () {
    const c = parseOciState(JSON.stringify(CREATE));
    assert.equal(c.pid, 18752);
    assert.equal(stageOf(c), 'create');
    assert.equal(modeOf(c, 'tap'), 'drop');
    assert.equal(portOf(c), 'eth0');
    const s = parseOciState(JSON.stringify(STOP));
    assert.equal(s.pid, undefined);
    assert.equal(stageOf(s), 'poststop');
    assert.equal(stageOf(parseOciState(JSON.stringify({ ...STOP, pid: 0 }))), 'poststop', 'pid 0 once stopped');
    assert.equal(stageOf(parseOciState(JSON.stringify({ ...CREATE, status: 'created' }))), 'create', 'prestart of a runtime that says created');
  });

  it('the default mode without the annotation; none; the port annotation', function () {
    const plain = parseOciState(JSON.stringify({ ...CREATE, annotations: undefined }));
    assert.deepEqual(plain.annotations, {});
    assert.equal(modeOf(plain, 'bypass'), 'bypass');
    assert.equal(modeOf(parseOciState(JSON.stringify({ ...CREATE, annotations: { [MODE_ANNOTATION]: 'none' } })), 'fwd'), 'none');
    assert.equal(portOf(parseOciState(JSON.stringify({ ...CREATE, annotations: { [PORT_ANNOTATION]: 'net1' } }))), 'net1');
    for (const m of ['fwd', 'tap', 'bypass', 'drop']) assert.equal(modeOf(parseOciState(JSON.stringify({ ...CREATE, annotations: { [MODE_ANNOTATION]: m } })), 'none'), m);
  });

  it('refuses what is not a state, with one line naming the field', function () {
    bad('', /is empty/);
    bad('   \n', /is empty/);
    bad('{"ociVersion":', /is not JSON/);
    bad('['.repeat(100000) + ']'.repeat(100000), /is not JSON|is not a JSON object/);
    bad([CREATE], /is not a JSON object/);
    bad('null', /is not a JSON object/);
    bad('"creating"', /is not a JSON object/);
    bad({ ...CREATE, ociVersion: undefined }, /ociVersion undefined is not a version/);
    bad({ ...CREATE, ociVersion: 1 }, /ociVersion 1 is not a version/);
    bad({ ...CREATE, id: '../../etc/passwd' }, /id "\.\.\/\.\.\/etc\/passwd" is not a container id/);
    bad({ ...CREATE, id: '' }, /is not a container id/);
    bad({ ...CREATE, id: 'a'.repeat(129) }, /is not a container id/);
    bad({ ...CREATE, id: 'x'.repeat(1 << 20) }, /id "x{20,}\.\.\. is not a container id/);
    bad({ ...CREATE, id: 42 }, /id 42 is not a container id/);
    bad({ ...CREATE, status: 'exploded' }, /status "exploded" \(expected creating, created, running, stopped, paused\)/);
    bad({ ...CREATE, pid: '18752' }, /pid "18752" is not a process id/);
    bad({ ...CREATE, pid: -1 }, /pid -1 is out of range \(expected 1\.\.4194304\)/);
    bad({ ...CREATE, pid: 0 }, /pid 0 is out of range/);
    bad({ ...CREATE, pid: 1.5 }, /pid 1\.5 is not an integer/);
    bad({ ...CREATE, pid: 2 ** 64 }, /pid .* is out of range/);
    bad({ ...CREATE, bundle: 'relative/path' }, /bundle "relative\/path" is not an absolute path/);
    bad({ ...CREATE, bundle: 7 }, /bundle 7 is not an absolute path/);
    bad({ ...CREATE, annotations: [] }, /annotations is not an object/);
    bad({ ...CREATE, annotations: 'x' }, /annotations is not an object/);
    bad({ ...CREATE, annotations: { [MODE_ANNOTATION]: ['drop'] } }, /annotation "io\.neuv-bpf\.mode" is \["drop"\], not a string/);
  });

  it('refuses a bad annotation, a stage where the workload runs, a creating state without a pid', function () {
    const st = (o: object) => parseOciState(JSON.stringify({ ...CREATE, ...o }));
    assert.throws(() => modeOf(st({ annotations: { [MODE_ANNOTATION]: 'FWD; rm -rf /' } }), 'tap'), /annotation io\.neuv-bpf\.mode="FWD; rm -rf \/" of container f05d.*: expected fwd, tap, bypass, drop, none/);
    assert.throws(() => portOf(st({ annotations: { [PORT_ANNOTATION]: 'eth0/../x' } })), /annotation io\.neuv-bpf\.port "eth0\/\.\.\/x" contains a space, '\/'/);
    assert.throws(() => portOf(st({ annotations: { [PORT_ANNOTATION]: 'averylonginterfacename' } })), /longer than 15 bytes/);
    assert.throws(() => stageOf(st({ status: 'running' })), /status running: oci-hook runs at createRuntime or prestart \(status creating\) and poststop/);
    assert.throws(() => stageOf(st({ pid: undefined })), /no pid at status creating/);
  });
});

describe('runtime watcher: what podman and the Docker Engine API print (unit)', function () {
  const ID = 'f62e48c68ea3dc6f289560a17634e22cbd5b7b7d0935d85341e31ae0afae5645';
  it('reads the container events of podman events --format json, and nothing else', function () {
    // As podman 4.3 prints them (test/runtime.test.ts follows the same).
    const line = `{"ID":"${ID}","Image":"localhost/x:test","Name":"web","Status":"start","Time":"2026-12-07T20:51:24.761878946Z","Type":"container","Attributes":{}}`;
    assert.deepEqual(parseEvent(line), { id: ID, name: 'web', status: 'start', time: Date.parse('2026-12-07T20:51:24.761Z') });
    assert.equal(parseEvent('{"Name":"localhost/x:test","Status":"pull","Time":"2026-12-07T20:51:13.8Z","Type":"image","Attributes":null}'), undefined);
    for (const bad of ['', 'garbage', '[]', 'null', `{"ID":"../../etc","Status":"start","Type":"container"}`, `{"ID":"${ID}","Status":7,"Type":"container"}`]) {
      assert.equal(parseEvent(bad), undefined, bad);
    }
  });

  it('reads inspect: pid, running, string annotations; a container it cannot read is left out', function () {
    const c = { Id: ID, Name: 'web', State: { Running: true, Pid: 22257 }, Config: { Annotations: { [MODE_ANNOTATION]: 'fwd', n: 7 } } };
    assert.deepEqual(parseInspect(JSON.stringify([c])), [{ id: ID, name: 'web', pid: 22257, running: true, annotations: { [MODE_ANNOTATION]: 'fwd' } }]);
    assert.deepEqual(parseInspect(JSON.stringify([{ ...c, State: { Running: false, Pid: 0 } }]))[0]!.running, false);
    for (const bad of [{ ...c, Id: 'a/b' }, { ...c, State: { Running: true, Pid: -4 } }, { ...c, State: { Running: true, Pid: '1' } }, { ...c, State: null }]) {
      assert.deepEqual(parseInspect(JSON.stringify([bad])), [], JSON.stringify(bad));
    }
    assert.deepEqual(parseInspect('Error: no such container'), []);
  });

  it('the Docker Engine API: its events (docker\'s die and destroy as died and remove), its inspect (a name with a /, HostConfig.Annotations)', function () {
    // As podman 4.3's Docker-compatible API streams them (test/runtime.test.ts follows the same); dockerd's carry the same fields.
    const ev = (action: string) => `{"status":"${action}","id":"${ID}","from":"localhost/x:test","Type":"container","Action":"${action}",` +
      `"Actor":{"ID":"${ID}","Attributes":{"image":"localhost/x:test","name":"web"}},"scope":"local","time":1796687211,"timeNano":1796687211162451031}`;
    assert.deepEqual(parseApiEvent(ev('start')), { id: ID, name: 'web', status: 'start', time: 1796687211162.451 });
    assert.deepEqual(['die', 'cleanup', 'destroy', 'remove', 'exec_start: sh'].map((a) => parseApiEvent(ev(a))?.status), ['died', 'cleanup', 'remove', 'remove', 'exec_start']);
    assert.equal(parseApiEvent(`{"Type":"image","Action":"pull","Actor":{"ID":"x"}}`), undefined);
    for (const bad of ['', 'garbage', '[]', `{"Type":"container","Action":"start","id":"../../etc"}`, `{"Type":"container","id":"${ID}"}`]) assert.equal(parseApiEvent(bad), undefined, bad);
    const c = { Id: ID, Name: '/web', State: { Running: true, Pid: 22257 }, Config: { Labels: { [MODE_ANNOTATION]: 'none' } }, HostConfig: { Annotations: { [MODE_ANNOTATION]: 'tap' } } };
    assert.deepEqual(parseInspect(JSON.stringify([c])), [{ id: ID, name: 'web', pid: 22257, running: true, annotations: { [MODE_ANNOTATION]: 'tap' } }], 'labels are not read');
  });
});
