/** Feature probes, `version`, and the clear error for a forced missing feature. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { cli, kernelState, leakChecks, makeNetns, makePinRoot, oneErrorLine, requireKernel } from './helpers';
import { features, kernelVersion, resetFeatureCache } from '../src/features';

describe('kernel features', function () {
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('parses kernel versions', function () {
    assert.deepEqual(kernelVersion('6.1.0-47-amd64'), [6, 1]);
    assert.deepEqual(kernelVersion('6.18.44-fc-v657'), [6, 18]);
    assert.deepEqual(kernelVersion('garbage'), [0, 0]);
  });

  it('probes agree with the kernel version', function () {
    resetFeatureCache();
    const f = features({});
    const [maj, min] = kernelVersion();
    const v = maj * 1000 + min;
    assert.equal(f.tcx, v >= 6006, 'tcx from 6.6');
    assert.equal(f.redirectPeer, v >= 5010, 'redirect_peer from 5.10');
    assert.equal(f.pktTypeFix, v < 6015);
    assert.equal(f.btf, fs.existsSync('/sys/kernel/btf/vmlinux'));
  });

  it('NEUV_BPF_FEATURES overrides a probe; a bad override is a usage error', function () {
    resetFeatureCache();
    assert.equal(features({ NEUV_BPF_FEATURES: 'tcx=0,redirect_peer=0' }).tcx, false);
    resetFeatureCache();
    assert.throws(() => features({ NEUV_BPF_FEATURES: 'tcx=maybe' }), /cannot parse 'tcx=maybe'/);
    resetFeatureCache();
  });

  it('version prints the kernel, libbpf and features (text and JSON)', function () {
    const t = cli(['version']);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^neuv-bpf \d+\.\d+\.\d+/);
    assert.match(t.stdout, /libbpf\s+v1\.\d+/);
    assert.match(t.stdout, /tcx\s+(yes|no)/);
    const j = JSON.parse(cli(['version', '--json']).stdout) as { features: { kernel: string; tcx: boolean } };
    assert.equal(typeof j.features.tcx, 'boolean');
    assert.match(j.features.kernel, /^\d+\.\d+/);
  });

  it('forcing a feature the kernel lacks gives "not supported by this kernel (needs >= X)" and changes nothing', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    const before = kernelState(ns, pins);
    const r = cli(['--netns', ns.name, '--bpffs', pins, 'load'], { env: { NEUV_BPF_ATTACH: 'tcx', NEUV_BPF_FEATURES: 'tcx=0' } });
    assert.equal(r.code, 6);
    assert.match(oneErrorLine(r), /not supported by this kernel .* \(needs Linux >= 6\.6 \(tcx\)\)/);
    assert.equal(kernelState(ns, pins), before);
  });
});
