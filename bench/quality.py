"""DP quality sweep: an in-process FedAvg simulation of the RHC demo (no Flower), scored like the audit.

Usage (repository root)::

    .venv/bin/python bench/quality.py '{"unet-dim": 8, "ema-decay": 0.9}'

The argument overrides run-config keys (kebab-case, as in ``[tool.flwr.app.config]``). It prints the loss and
epsilon per round, then one ``RESULT`` line with the fidelity (overall, column shapes, pair trends) and the
train-on-synthetic AUCs of logistic regression and gradient boosting on the holdout, next to the train-on-real
AUCs. The README's tuning table came from this script, one run per setting (seed-to-seed noise is about
+-0.02 fidelity and +-0.05 AUC). Not part of ``python -m bench``: it measures quality, not speed.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from fedsynth.audit.fidelity import evaluate_fidelity
from fedsynth.audit.utility import evaluate_utility
from fedsynth.common.config import RunConfig
from fedsynth.common.demo_data import load_rhc, rhc_schema, split_non_iid
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.prior import pretrain_public
from fedsynth.common.sampling import make_sampler, sample
from fedsynth.common.training import calibrate_noise, planned_sample_rate, train_dp
from fedsynth.common.validation import validate_frame


def main(overrides: dict[str, object]) -> None:
    """Simulate the demo federation with ``overrides`` and print its quality figures."""
    torch.set_num_threads(1)
    rc = RunConfig.from_user_config({"num-server-rounds": 5, "local-steps": 40, **overrides})
    schema = rhc_schema()
    transform = TabularTransform(schema)
    sites, holdout = split_non_iid(load_rhc(), 3, by="fac_cat1", seed=0)
    assert not validate_frame(holdout, schema)
    xs = [transform.transform(site) for site in sites]
    sched = rc.scheduler_config()
    model = TabularUNet1D(rc.model_config(transform.n_features))
    t0 = time.time()
    if rc.public_pretrain_steps:
        warm = pretrain_public(model, transform, scheduler_config=sched, steps=rc.public_pretrain_steps,
                               batch_size=min(rc.batch_size, 256), lr=rc.lr, seed=rc.seed)
        model.load_state_dict(warm.state_dict)
    total_steps = rc.num_server_rounds * rc.local_steps
    sigmas = [rc.noise_multiplier or calibrate_noise(
        target_epsilon=rc.target_epsilon, delta=rc.target_delta,
        sample_rate=planned_sample_rate(len(x), rc.batch_size), steps=total_steps) for x in xs]
    states: list[dict | None] = [None] * len(xs)
    for server_round in range(rc.num_server_rounds):
        results = []
        for i, x in enumerate(xs):
            res = train_dp(model, x, scheduler_config=sched, noise_multiplier=sigmas[i],
                           max_grad_norm=rc.max_grad_norm, batch_size=rc.batch_size, steps=rc.local_steps, lr=rc.lr,
                           delta=rc.target_delta, accountant_state=states[i], seed=server_round * 10 + i,
                           grad_sample_mode=rc.grad_sample_mode, multiplicity=rc.multiplicity,
                           ema_decay=rc.ema_decay)
            states[i] = res.accountant_state
            results.append(res)
        total = sum(r.num_examples for r in results)
        model.load_state_dict({k: sum(r.state_dict[k] * r.num_examples for r in results) / total
                               for k in results[0].state_dict})
        print(f"round {server_round + 1} loss {np.mean([r.loss for r in results]):.4f} "
              f"epsilon {[round(r.epsilon, 2) for r in results]}", flush=True)
    encoded = sample(model, make_sampler(sched, "ddim"), 3000, n_features=transform.n_features,
                     num_inference_steps=50, generator=torch.Generator().manual_seed(0))
    synthetic = transform.inverse_transform(encoded.numpy())
    fid = evaluate_fidelity(holdout, synthetic, schema=schema)
    util = evaluate_utility(holdout, synthetic, schema=schema)
    aucs = [(m.model, round(m.trtr_auc, 3), round(m.tstr_auc, 3)) for m in util.models] if util else None
    print("RESULT", json.dumps(overrides), f"time {time.time() - t0:.0f} s",
          f"fidelity {fid.overall:.3f} shapes {fid.column_shapes:.3f} pairs {fid.column_pair_trends:.3f}",
          "utility (model, TRTR AUC, TSTR AUC)", aucs)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
