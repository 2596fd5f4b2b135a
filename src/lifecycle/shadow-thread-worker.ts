// The shadow policy's thread (see shadow-thread.ts): instantiates each validated bundle it is sent and
// answers evaluations in order with the same decide() the serving thread uses.
import { parentPort } from 'node:worker_threads';
import { decide } from '../decision/decision.js';
import type { LoadedPolicy } from '../policy/policy.js';
import type { ShadowReply, ShadowRequest } from './shadow-thread.js';
import { instantiateValidated } from './validated-bundle.js';
import { errorMessage } from '../common/errors.js';

const port = parentPort!;
let policy: LoadedPolicy | undefined;
// Policies are instantiated in order; evaluations wait for the one posted before them.
let ready: Promise<unknown> = Promise.resolve();

port.on('message', (m: ShadowRequest) => {
  if (m.type === 'policy') {
    ready = ready.then(async () => {
      try {
        policy = await instantiateValidated(m.bundle, m.load);
        port.postMessage({ type: 'policy', revision: policy.revision } satisfies ShadowReply);
      } catch (e) {
        port.postMessage({ type: 'policy', revision: '', error: errorMessage(e) } satisfies ShadowReply);
      }
    });
    return;
  }
  ready = ready.then(() => {
    port.postMessage({ type: 'decision', id: m.id, decision: decide(m.input, policy) } satisfies ShadowReply);
  });
});
