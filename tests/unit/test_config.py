import pytest
from pydantic import ValidationError

from bonito_tasks.config import PROMPT_OVERHEAD_TOKENS, TRAINING_INPUT_TOKENS, RunConfig
from bonito_tasks.format import build_prompt
from bonito_tasks.generate.parse import ParseFailure, parse_generation
from bonito_tasks.task_types import TASK_TYPES, UnknownTaskType, normalize_task_type


def test_defaults_follow_bonito():
    config = RunConfig(source="/docs", store="/store")
    assert config.model_id == "BatsResearch/bonito-v1"
    assert config.sampling_params() == {"max_tokens": 256, "temperature": 0.5, "top_p": 0.95, "n": 1}
    assert config.chunk_max_tokens == TRAINING_INPUT_TOKENS - PROMPT_OVERHEAD_TOKENS - 256


def test_task_types_by_short_or_full_name():
    config = RunConfig(source="/d", store="/s", task_types=["Yes-No Question Answering", "nli", "ynqa"])
    assert config.task_types == ["ynqa", "nli"]
    assert len(TASK_TYPES) == 16
    with pytest.raises(UnknownTaskType, match="valid task types: exqa"):
        normalize_task_type("poetry")


def test_bad_configs_get_clear_errors():
    with pytest.raises(ValidationError, match="extra_forbidden"):
        RunConfig(source="/d", store="/s", temprature=0.3)
    with pytest.raises(ValidationError, match="exceeds max_model_len"):
        RunConfig(source="/d", store="/s", chunk_max_tokens=2000, max_model_len=2048)
    with pytest.raises(ValidationError, match="source is empty"):
        RunConfig(source=" ", store="/s")
    assert RunConfig(source="/d", store="/s").sha256() != RunConfig(source="/d", store="/s", n=2).sha256()


def test_prompt_matches_reference_format():
    assert build_prompt("  Some context.\n", "exqa") == (
        "<|tasktype|>\nextractive question answering\n<|context|>\nSome context.\n<|task|>\n"
    )


def test_parse_like_reference():
    parsed = parse_generation("Read: {{context}}\nQ: who?\n<|pipe|>\nThe licensor", " The text. ")
    assert parsed.input == "Read: The text.\nQ: who?"
    assert parsed.output == "The licensor"
    for text, reason in [("no pipe here", "no_pipe"), ("a <|pipe|> b <|pipe|> c", "extra_pipe")]:
        with pytest.raises(ParseFailure) as err:
            parse_generation(text, "ctx")
        assert err.value.reason == reason


def test_hash_survives_a_json_round_trip():
    """A worker rebuilds the config from JSON (XCom, params); its hash must match, or a retry
    would not recognise its own checkpoints."""
    import json

    from bonito_tasks.config import RunConfig

    config = RunConfig(source="/docs", store="/store")
    assert RunConfig(**json.loads(config.model_dump_json())).sha256() == config.sha256()
