"""Router tokenization equals what the model's Hugging Face tokenizer produces.

The comparison with vLLM's own ``/tokenize`` is in tests/e2e (it needs a running engine);
this one checks the same contract against transformers, which vLLM uses underneath.
"""

from __future__ import annotations

import pytest

from bisllm.router.tokenize import PromptTokenizer, TokenizeError

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": "Hello there, how are you?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "And three more, in Ünïcödé?"},
    ],
]


@pytest.fixture(scope="module")
def both(tiny_model):
    return PromptTokenizer(tiny_model), transformers.AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.mark.parametrize("messages", CHATS)
def test_chat_ids_match_transformers(both, messages):
    ours, hf = both
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.render_chat({"messages": messages}) == expected
    expected_ids = hf(expected, add_special_tokens=False)["input_ids"]
    assert ours.chat_ids({"messages": messages}) == expected_ids


def test_text_parts_are_joined(both):
    ours, _ = both
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    plain = [{"role": "user", "content": "a\nb"}]
    assert ours.chat_ids({"messages": parts}) == ours.chat_ids({"messages": plain})


@pytest.mark.parametrize("prompt", ["Once upon a time", "  spaces and\nnewlines  ", "é€"])
def test_completion_ids_match_transformers(both, prompt):
    ours, hf = both
    assert ours.completion_ids({"prompt": prompt}) == hf(prompt)["input_ids"]
    assert (
        ours.completion_ids({"prompt": prompt, "add_special_tokens": False})
        == hf(prompt, add_special_tokens=False)["input_ids"]
    )


def test_token_id_prompts_pass_through(both):
    ours, _ = both
    assert list(ours.completion_ids({"prompt": [5, 6, 7]})) == [5, 6, 7]
    assert list(ours.completion_ids({"prompt": [[1, 2], [3]]})) == [1, 2]


@pytest.mark.parametrize("prompt", [[1, "a"], [-1, 2], [1, 2**40], [[1], [2, None]], [1, 2.5]])
def test_bad_token_ids_are_rejected(both, prompt):
    ours, _ = both
    with pytest.raises(TokenizeError, match="token ids"):
        ours.completion_ids({"prompt": prompt})


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        PromptTokenizer(tmp_path)


def test_message_that_is_not_an_object(both):
    ours, _ = both
    with pytest.raises(TokenizeError):
        ours.chat_ids({"messages": ["hi"]})
