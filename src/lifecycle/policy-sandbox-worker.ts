// The candidate thread (see policy-sandbox.ts): loads the bundle, captures its memory image before
// anything evaluates on it, runs the cases against it, posts one SandboxMessage with the image (the
// serving thread restores it instead of parsing the bundle again). Everything else dies with the thread.
import { parentPort } from 'node:worker_threads';
import { loadPolicyBundle, type PolicyImage } from '../policy/policy.js';
import type { SandboxJob, SandboxMessage } from './policy-sandbox.js';
import { errorMessage } from '../common/errors.js';

async function run(job: SandboxJob): Promise<SandboxMessage> {
  try {
    const policy = await loadPolicyBundle(job.bytes, { ...job.load, source: job.source, captureImage: true });
    // Cases bring the whole pipeline (certificates included): loaded only when there are some, since
    // every candidate pays for this thread's start.
    const cases =
      job.casesPath === undefined
        ? 0
        : await (await import('./policy-store.js')).checkPolicy(policy, { casesPath: job.casesPath });
    return { ok: true, revision: policy.revision, cases, ...(policy.image ? { image: own(policy.image) } : {}) };
  } catch (e) {
    return { ok: false, error: stripSource(job, errorMessage(e)) };
  }
}

// The serving side prefixes "policy <source>:" itself.
function stripSource(job: SandboxJob, message: string): string {
  const prefix = `policy ${job.source}: `;
  return message.startsWith(prefix) ? message.slice(prefix.length) : message;
}

/** The image with buffers of its own: moved (transferred) to the serving thread, not copied. */
function own(image: PolicyImage): PolicyImage {
  return { ...image, wasm: new Uint8Array(image.wasm) };
}

function transferables(m: SandboxMessage): ArrayBuffer[] {
  if (!m.ok || !m.image) return [];
  return [m.image.wasm, ...m.image.memory.chunks].map((bytes) => bytes.buffer as ArrayBuffer);
}

// One job per thread: started ahead, it waits here for its candidate.
parentPort!.once(
  'message',
  (job: SandboxJob) => void run(job).then((m) => parentPort!.postMessage(m, transferables(m))),
);
