"""ComposePool: the models of the compose world, answering the query they are sent.

A thin async wrapper over `recal_jax.data.compose.Responder` (where the answer rule and the
model table live, so that the suite's logged one-call outcomes and this pool's replies are the
same function): the record is never read (needs_record = False), so a sub-question built from
an earlier reply is answered on its own merits. Deterministic in (seed, model, canonical query).
Cost: price_usd of estimate_tokens(query) in and estimate_tokens(reply) out.
"""

from __future__ import annotations

from recal_jax.data.compose import MODEL_TABLE, ComposeOptions, Responder, SkillTable, compose_world
from recal_jax.data.compose_world import World
from recal_jax.data.schema import DataError, estimate_tokens, price_usd
from recal_jax.routing.pools.base import Pool, PoolReply
from recal_jax.routing.pools.registry import PoolRequest, PoolSpec, register_pool


class ComposePool(Pool):
    """Models of `table` (default MODEL_TABLE) answering queries about `world` (see
    recal_jax.data.compose for the rule); `seed` keys every draw and must be the suite's seed for
    the replies to equal the suite's logged ones."""

    needs_record = False

    def __init__(self, world: World, table: SkillTable = MODEL_TABLE, seed: int = 0, *, max_concurrency: int = 64):
        super().__init__(table.infos, max_concurrency=max_concurrency)
        self.world, self.table, self.seed = world, table, int(seed)
        self.responder = Responder(world, table, seed)

    async def _call(self, model, query, record):
        text = self.responder.reply(model, query).text
        n_in, n_out = estimate_tokens(query), estimate_tokens(text)
        return PoolReply(text=text, cost_usd=price_usd(self._models[model], n_in, n_out), tokens=n_in + n_out,
                         latency_s=0.0, ok=True, prompt_tokens=n_in, completion_tokens=n_out)


def build_compose_pool(request: PoolRequest) -> ComposePool:
    """The pool of the compose suite of the request's seed and suite options."""
    options = request.suite_options
    if options is not None and not isinstance(options, ComposeOptions):
        raise DataError(f"pool 'compose' needs the compose suite's options, got {type(options).__name__}")
    unknown = sorted(set(request.log.model_names) - set(MODEL_TABLE.models))
    if unknown:
        raise DataError(f"pool 'compose' has the models {list(MODEL_TABLE.models)}; the log names {unknown}")
    return ComposePool(compose_world(request.seed, options), MODEL_TABLE, request.seed,
                       max_concurrency=max(int(request.concurrency), 1))


register_pool(PoolSpec("compose", build_compose_pool,
                       "the compose world's models, answering the query they are sent (suite 'compose')"))

__all__ = ["ComposePool", "build_compose_pool"]
