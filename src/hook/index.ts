/**
 * The OCI runtime hook (`neuv-bpf oci-hook`, docs/containers.md):
 *
 *   state.ts  the OCI state on stdin, validated; the annotations; the stage
 *   hook.ts   intercept at createRuntime/prestart, release at poststop, the failure policy
 */
export { HOOK_MODES, MAX_STATE_BYTES, MODE_ANNOTATION, PORT_ANNOTATION, modeOf, parseOciState, portOf, stageOf } from './state';
export type { HookMode, OciState } from './state';
export { failedOpen, runHook } from './hook';
export type { HookOptions, HookResult } from './hook';
export { readFailOpenCount } from '../runtime';
export type { FailOpenCount } from '../runtime';
