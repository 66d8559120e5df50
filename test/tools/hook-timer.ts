/**
 * Preloaded into the OCI hook by the podman suites (`node -r
 * dist/test/tools/hook-timer.js bin/neuv-bpf ... oci-hook`, test/podman.ts
 * hooksDir's `times`): as the hook exits, appends one JSON line to the file
 * NEUV_BPF_TEST_HOOK_TIMES names: its stage (NEUV_BPF_TEST_HOOK_STAGE), its
 * exit code and its whole time in milliseconds from its process's start
 * (Node.js start-up included), what the runtime's hook timeout counts.
 */
import * as fs from 'node:fs';
import { performance } from 'node:perf_hooks';

const file = process.env.NEUV_BPF_TEST_HOOK_TIMES;
if (file) {
  process.on('exit', (code) => {
    const line = JSON.stringify({ stage: process.env.NEUV_BPF_TEST_HOOK_STAGE ?? '', code, ms: Math.round(performance.now()), at: Date.now() });
    fs.appendFileSync(file, `${line}\n`);
  });
}
