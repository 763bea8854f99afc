"""Stage 4, evaluation: the policy on the test split (greedy by default) and the reference
routers of the same log (single models, oracle, random, the trained classical routers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from recal_jax.evaluation.evaluate import evaluate_policy
from recal_jax.evaluation.reference_routers import reference_routers
import recal_jax.evaluation.decomposers  # noqa: F401  (registers the compose world's references)
from recal_jax.evaluation.router_result import RouterResult
from recal_jax.evaluation.suite_references import suite_references
from recal_jax.training.components import eval_sampling

if TYPE_CHECKING:
    from recal_jax.training.setup import Run


def evaluate(run: "Run", params, key, on_batch: Callable | None = None) -> dict:
    """The policy `params` on the test split: accuracy, per dataset, cost, format, routes."""
    return evaluate_policy(run.test_runner, params, run.suite.test, key, batch_size=run.cfg.eval.batch_size,
                           sampling=eval_sampling(run.cfg.eval, run.cfg.grpo), on_batch=on_batch)


def references(run: "Run") -> tuple[dict[str, RouterResult], dict[str, dict]]:
    """(RouterResults, their summary.json entries): the reference routers on the test split,
    trained on the train split (cached with eval.reference_cache_dir), then the suite's own
    registered references (e.g. the compose world's decomposers) on the run's test pool."""
    refs = reference_routers(run.suite.test, run.suite.train, seed=run.cfg.run.seed,
                             cache_dir=run.cfg.eval.reference_cache_dir or None)
    entries = {k: v.to_json() for k, v in refs.items()}
    extra = suite_references(run.cfg.run.suite, run.suite.test, run.test_runner.engine.pool, run.cfg.run.seed,
                             run.cfg.suite_options)
    for name, ref in extra.items():
        refs[name], entries[name] = ref.result, ref.to_json()
    return refs, entries


def truncated_questions(run: "Run") -> dict[str, int]:
    """How many questions of each split were cut to tokenizer.max_question_tokens."""
    return {name: len(getattr(runner.prompt_ids, "truncated", ()))
            for name, runner in (("train", run.train_runner), ("test", run.test_runner))}
