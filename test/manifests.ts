/**
 * The deployment files of deploy/ as the tests read them: the Kubernetes
 * manifests (YAML, parsed by Debian's python3-yaml: no YAML parser among the
 * package's dependencies) and the hooks.d files.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './helpers';

export const DAEMONSET = path.join(ROOT, 'deploy', 'neuv-bpf-daemonset.yaml');

export interface K8sContainer {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: Array<{ name: string; value: string }>;
  securityContext?: { privileged?: boolean };
  livenessProbe?: { exec: { command: string[] } };
  volumeMounts?: Array<{ name: string; mountPath: string; mountPropagation?: string }>;
}

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: {
    template: {
      spec: {
        hostNetwork?: boolean;
        hostPID?: boolean;
        terminationGracePeriodSeconds?: number;
        initContainers?: K8sContainer[];
        containers: K8sContainer[];
        volumes: Array<{ name: string; hostPath?: { path: string; type?: string } }>;
      };
    };
  };
}

const parsed = new Map<string, K8sObject[]>();

/** Every document of a YAML file (parsed once per process). */
export function readYaml(file: string): K8sObject[] {
  const had = parsed.get(file);
  if (had) return had;
  const r = spawnSync('python3', ['-c', 'import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))', file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${file}: not YAML python3-yaml reads (make deps): ${r.stderr.trim()}`);
  const docs = JSON.parse(r.stdout) as K8sObject[];
  parsed.set(file, docs);
  return docs;
}

/** The DaemonSet of deploy/neuv-bpf-daemonset.yaml and its pod spec. */
export function daemonSet(): { ds: K8sObject; pod: NonNullable<K8sObject['spec']>['template']['spec'] } {
  const ds = readYaml(DAEMONSET).find((o) => o.kind === 'DaemonSet');
  if (!ds?.spec) throw new Error(`${DAEMONSET}: no DaemonSet`);
  return { ds, pod: ds.spec.template.spec };
}

export interface HookFile {
  version: string;
  hook: { path: string; args: string[]; env?: string[]; timeout?: number };
  when: { always?: boolean; annotations?: Record<string, string> };
  stages: string[];
}

export function hookFile(name: string): HookFile {
  return JSON.parse(fs.readFileSync(path.join(ROOT, 'deploy', name), 'utf8')) as HookFile;
}
