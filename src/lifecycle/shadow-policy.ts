// A candidate policy evaluated beside the live one on the same input, never affecting the answer: the
// safe way to roll out a stricter egress rule. With a ShadowThread (what `serve` uses) the shadow runs on
// its own thread: a Check pays only for posting its input. Without one (tests, embedding) it runs on
// this thread after the answer was handed to the transport (setImmediate), which bounds nothing: an
// evaluation that takes 255 ms holds the event loop for 255 ms. Either way, when more comparisons wait
// than maxPending (a burst, or a slow candidate), the extra ones are skipped and counted, not queued.
import type { Logger } from 'pino';
import { decide, type Decision, type PolicySource } from '../decision/decision.js';
import type { PolicyInput } from '../decision/input.js';
import type { ShadowThread } from './shadow-thread.js';

const DEFAULT_MAX_PENDING = 1000;

export type ShadowDisagreementKind = 'allow_to_deny' | 'deny_to_allow' | 'pool_changed';

/** What the shadow comparison reports (service/metrics.ts counts it). */
export interface ShadowMetrics {
  /** one comparison made; evalMs: the shadow's evaluation time */
  observeShadow(evalMs: number, disagreement: ShadowDisagreementKind | undefined): void;
  /** one comparison not made (too many waiting, or the thread could not answer) */
  observeShadowSkipped(): void;
}

export interface ShadowDisagreement {
  kind: ShadowDisagreementKind;
  live: Decision;
  shadow: Decision;
}

export interface ShadowEvaluatorOptions {
  log: Logger;
  metrics?: ShadowMetrics;
  maxPending?: number;
  /** every disagreement, after it was logged and counted (tests) */
  onDisagreement?: (d: ShadowDisagreement) => void;
  /** evaluate there, off the serving thread */
  thread?: ShadowThread;
}

export class ShadowEvaluator {
  private pending = 0;
  private readonly maxPending: number;

  constructor(
    private readonly shadow: PolicySource,
    private readonly opts: ShadowEvaluatorOptions,
  ) {
    this.maxPending = opts.maxPending ?? DEFAULT_MAX_PENDING;
  }

  /** Queues the comparison of `live` with the shadow policy's answer to the same input. */
  readonly observe = (input: PolicyInput, live: Decision): void => {
    // Without an identity the policy was not asked, and neither would the shadow be.
    if (live.identity === null || this.shadow.current === undefined) return;
    if (this.pending >= this.maxPending) {
      this.opts.metrics?.observeShadowSkipped();
      return;
    }
    this.pending++;
    const thread = this.opts.thread;
    setImmediate(() => {
      if (!thread) {
        this.pending--;
        this.compare(input, live);
        return;
      }
      void thread.evaluate(input).then((shadow) => {
        this.pending--;
        if (shadow) this.record(live, shadow);
        else this.opts.metrics?.observeShadowSkipped();
      });
    });
  };

  /** Evaluates the shadow policy now, on this thread; logs and counts a disagreement. */
  compare(input: PolicyInput, live: Decision): ShadowDisagreement | undefined {
    return this.record(live, decide(input, this.shadow.current));
  }

  private record(live: Decision, shadow: Decision): ShadowDisagreement | undefined {
    const kind = disagreement(live, shadow);
    this.opts.metrics?.observeShadow(shadow.eval_ms, kind);
    if (!kind) return undefined;
    this.opts.log.warn(
      {
        decision_id: live.decision_id,
        caller: live.caller,
        spiffe_id: live.identity?.spiffe_id ?? '',
        namespace: live.identity?.namespace ?? '',
        destination: live.destination,
        disagreement: kind,
        live: {
          allow: live.allow,
          snat_pool: live.snat_pool,
          reason: live.reason,
          policy_revision: live.policy_revision,
        },
        shadow: {
          allow: shadow.allow,
          snat_pool: shadow.snat_pool,
          reason: shadow.reason,
          policy_revision: shadow.policy_revision,
          policy_error: shadow.policy_error,
        },
      },
      'shadow policy disagrees',
    );
    const found = { kind, live, shadow };
    this.opts.onDisagreement?.(found);
    return found;
  }
}

function disagreement(live: Decision, shadow: Decision): ShadowDisagreementKind | undefined {
  if (live.allow && !shadow.allow) return 'allow_to_deny';
  if (!live.allow && shadow.allow) return 'deny_to_allow';
  if (live.allow && live.snat_pool !== shadow.snat_pool) return 'pool_changed';
  return undefined;
}
