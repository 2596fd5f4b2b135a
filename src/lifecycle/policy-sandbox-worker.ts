// The candidate thread (see policy-sandbox.ts): loads the bundle exactly as the serving thread will,
// runs the cases against it, posts one SandboxMessage. Everything it allocates dies with the thread.
import { parentPort } from 'node:worker_threads';
import { loadPolicyBundle } from '../policy/policy.js';
import type { SandboxJob, SandboxMessage } from './policy-sandbox.js';

async function run(job: SandboxJob): Promise<SandboxMessage> {
  try {
    const policy = await loadPolicyBundle(job.bytes, { ...job.load, source: job.source });
    // Cases bring the whole pipeline (certificates included): loaded only when there are some, since
    // every candidate pays for this thread's start.
    const cases =
      job.casesPath === undefined
        ? 0
        : await (await import('./policy-store.js')).checkPolicy(policy, { casesPath: job.casesPath });
    return { ok: true, revision: policy.revision, cases };
  } catch (e) {
    return { ok: false, error: stripSource(job, (e as Error).message ?? String(e)) };
  }
}

// The serving side prefixes "policy <source>:" itself.
function stripSource(job: SandboxJob, message: string): string {
  const prefix = `policy ${job.source}: `;
  return message.startsWith(prefix) ? message.slice(prefix.length) : message;
}

// One job per thread: started ahead, it waits here for its candidate.
parentPort!.once('message', (job: SandboxJob) => void run(job).then((m) => parentPort!.postMessage(m)));
