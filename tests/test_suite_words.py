"""tokenizer.suite_words: the suite's atomic words (the compose world's entity names) become one
token each; without it they are byte pairs like any other word."""
from recal_jax.data.compose import entity_names, make_compose
from recal_jax.training.builders import build_tokenizer
from recal_jax.training.run_config import ModelSection, TokenizerSection


def test_entity_names_are_one_token_each_only_with_suite_words():
    suite = make_compose(seed=0, n_train_per_dataset=20, n_test_per_dataset=5)
    names = entity_names(suite)
    answers = {g for log in (suite.train, suite.test) for r in log.records for g in r.golden_answers}
    assert answers <= set(names)  # every gold answer is an entity name the suite lists
    whole = build_tokenizer(TokenizerSection(vocab_size=1024, suite_words=True), ModelSection(), suite, names)
    split = build_tokenizer(TokenizerSection(vocab_size=300, suite_words=False), ModelSection(), suite, names)
    for name in names[:50]:
        text = f"where was {name} born?"
        ids = whole.encode(text)
        assert whole.encode(name) in ([i] for i in ids) and whole.decode(ids) == text
        assert len(split.encode(name)) > 1 and split.decode(split.encode(text)) == text
