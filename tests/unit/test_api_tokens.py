"""API tokens as operators pass them: ``KIMBALL_API_TOKENS`` (comma-separated) and a token
file (one per line), together with app.config's; the file re-read, a failed re-read keeping
the tokens of before; no token ever in an error or a log line."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from kimball_grpc.api.auth import ApiTokens, TokenChecker, load_api_tokens
from kimball_grpc.config.settings import Settings, load_settings
from kimball_grpc.config.tokens import (
    MAX_TOKENS,
    TokenFileError,
    parse_token_list,
    read_token_file,
    token_id,
)
from kimball_grpc.core.errors import ConfigError

SETTING = "KIMBALL_API_TOKENS_FILE"


def token_file(tmp_path: Path, text: str, name: str = "api-tokens") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- KIMBALL_API_TOKENS -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("one", ("one",)),
        ("one,two", ("one", "two")),
        (" one , two\t,three ", ("one", "two", "three")),
        ("k3y-with.symbols~_+/=", ("k3y-with.symbols~_+/=",)),
    ],
)
def test_a_comma_separated_list_is_trimmed(value, tokens):
    assert parse_token_list("KIMBALL_API_TOKENS", value) == tokens
    assert load_settings({"KIMBALL_API_TOKENS": value}).api_tokens == tokens


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("one,,two", "entry 2 of 3 is empty"),
        ("one,", "entry 2 of 2 is empty"),
        (",one", "entry 1 of 2 is empty"),
        ("  ", "entry 1 of 1 is empty"),
        ("one, ,two", "entry 2 of 3 is empty"),
        ("first-secret,with space", "entry 2: a token must be printable ASCII without spaces"),
        ("secrét-value", "entry 1: a token must be printable ASCII"),
        ("tab\there-value", "entry 1: a token must be printable ASCII"),
    ],
)
def test_a_bad_list_is_refused_naming_the_entry_never_the_token(value, problem):
    with pytest.raises(ConfigError) as refused:
        load_settings({"KIMBALL_API_TOKENS": value})
    message = refused.value.message
    assert message.startswith("KIMBALL_API_TOKENS: ") and problem in message
    for token in value.split(","):
        assert len(token.strip()) < 4 or token.strip() not in message


def test_too_many_tokens_are_refused():
    value = ",".join(f"t{i}" for i in range(MAX_TOKENS + 1))
    with pytest.raises(ConfigError, match=f"more than the {MAX_TOKENS} accepted"):
        parse_token_list("KIMBALL_API_TOKENS", value)


def test_file_settings_from_the_environment_and_flags(tmp_path):
    settings = load_settings(
        {"KIMBALL_API_TOKENS_FILE": "/etc/kimball/secrets/api-tokens"},
    )
    assert settings.api_tokens_file == Path("/etc/kimball/secrets/api-tokens")
    assert settings.api_tokens_file_poll_s == 5.0
    settings = load_settings(
        {"KIMBALL_API_TOKENS_FILE": "a", "KIMBALL_API_TOKENS_FILE_POLL": "0.5"},
        overrides={"api_tokens_file": Path("b")},
    )
    assert (settings.api_tokens_file, settings.api_tokens_file_poll_s) == (Path("b"), 0.5)
    with pytest.raises(ConfigError, match="KIMBALL_API_TOKENS_FILE_POLL must be a positive"):
        load_settings({"KIMBALL_API_TOKENS_FILE_POLL": "0"})


def test_settings_never_show_a_token():
    settings = load_settings({"KIMBALL_API_TOKENS": "hidden-secret"})
    assert "hidden-secret" not in repr(settings)


# --- the token file ---------------------------------------------------------------------


def test_a_file_holds_one_token_per_line_with_comments_and_blank_lines(tmp_path):
    path = token_file(
        tmp_path,
        "\ufeff# rotated 2024-06-01\n\nfirst-token\n   second-token  \r\n  # old: gone\nthird\n",
    )
    assert read_token_file(path, SETTING) == ("first-token", "second-token", "third")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no token"),
        ("# only a comment\n\n   \n", "holds no token"),
        ("good\nbad token\n", "line 2: a token must be printable ASCII without spaces"),
        ("good\n\ttoo,many words\n", "line 2: a token must be printable ASCII"),
    ],
)
def test_a_file_without_tokens_or_with_a_bad_line_is_refused(tmp_path, text, problem):
    path = token_file(tmp_path, text)
    with pytest.raises(TokenFileError) as refused:
        read_token_file(path, SETTING)
    message = refused.value.message
    assert message.startswith(f"{SETTING} {path}: ") and problem in message
    assert "token\n" not in message and "many" not in message


def test_a_missing_unreadable_or_binary_file_is_refused(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read it: No such file or directory"):
        read_token_file(tmp_path / "absent", SETTING)
    with pytest.raises(TokenFileError, match="cannot read it: Is a directory"):
        read_token_file(tmp_path, SETTING)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00token")
    with pytest.raises(TokenFileError, match="not UTF-8 text"):
        read_token_file(binary, SETTING)
    huge = tmp_path / "huge"
    huge.write_bytes(b"t" * (1024 * 1024 + 1))
    with pytest.raises(TokenFileError, match="larger than"):
        read_token_file(huge, SETTING)


def test_a_token_is_named_by_a_hash_prefix():
    assert token_id("secret") == hashlib.sha256(b"secret").hexdigest()[:8]
    assert len(token_id("x")) == 8 and token_id("x") != token_id("y")


# --- every source together, and reloads ------------------------------------------------


def test_every_source_is_accepted_together(tmp_path):
    path = token_file(tmp_path, "from-file\n")
    settings = Settings(
        data_dir=tmp_path,
        api_auth_tokens=("from-config",),
        api_tokens=("from-env", "from-config"),
        api_tokens_file=path,
    )
    tokens = load_api_tokens(settings)
    assert tokens is not None
    checker = TokenChecker(tokens.tokens)
    for token in ("from-config", "from-env", "from-file"):
        assert checker.allows(f"Bearer {token}")
    assert not checker.allows("Bearer from-nowhere")
    assert len(tokens.tokens) == 3  # the repeated one counts once
    assert tokens.describe() == (
        f"3 token(s) accepted: 1 from app.config, 2 from KIMBALL_API_TOKENS, 1 from {path}"
    )
    assert not (tmp_path / "api-token").exists()  # configured: none generated


def test_a_token_file_alone_is_enough_and_no_token_is_generated(tmp_path):
    path = token_file(tmp_path, "only\n")
    tokens = load_api_tokens(Settings(data_dir=tmp_path, api_tokens_file=path))
    assert tokens is not None and tokens.tokens.accepted == (b"only",)
    assert not (tmp_path / "api-token").exists()


def test_a_token_file_that_cannot_be_read_at_start_is_a_config_error(tmp_path):
    settings = Settings(data_dir=tmp_path, api_tokens_file=tmp_path / "absent")
    with pytest.raises(ConfigError) as refused:
        load_api_tokens(settings)
    assert refused.value.message == (
        f"--api-tokens-file (KIMBALL_API_TOKENS_FILE) {tmp_path / 'absent'}: cannot read it: "
        "No such file or directory"
    )


def test_a_gateway_without_tokens_checks_none(tmp_path):
    assert load_api_tokens(Settings(data_dir=tmp_path), generate=False) is None


def test_a_reload_replaces_the_files_tokens_and_logs_only_their_ids(tmp_path, caplog):
    path = token_file(tmp_path, "old-token\nkept-token\n")
    results: list[str] = []
    tokens = ApiTokens({"app.config": ("config-token",)}, path, results.append)
    checker = TokenChecker(tokens.tokens)
    path.write_text("kept-token\nnew-token\n")
    with caplog.at_level(logging.DEBUG):
        assert tokens.reload("SIGHUP")
    assert results == ["ok"]
    assert [checker.allows(f"Bearer {t}") for t in ("old-token", "kept-token", "new-token")] == [
        False,
        True,
        True,
    ]
    assert checker.allows("Bearer config-token")  # the other sources stay
    logged = caplog.text
    assert f"added: {token_id('new-token')}; removed: {token_id('old-token')}" in logged
    for secret in ("old-token", "kept-token", "new-token", "config-token"):
        assert secret not in logged


@pytest.mark.parametrize(
    "break_it",
    [
        lambda path: path.unlink(),
        lambda path: path.write_text("# emptied\n"),
        lambda path: path.write_text("a line with spaces\n"),
        lambda path: path.write_bytes(b"\xff\xff"),
    ],
    ids=["removed", "emptied", "malformed", "binary"],
)
def test_a_failed_reload_keeps_the_tokens_of_before_and_warns(tmp_path, caplog, break_it):
    path = token_file(tmp_path, "good-token\n")
    results: list[str] = []
    tokens = ApiTokens({}, path, results.append)
    checker = TokenChecker(tokens.tokens)
    break_it(path)
    with caplog.at_level(logging.INFO):
        assert not tokens.reload("the file changed")
    assert results == ["failed"]
    assert checker.allows("Bearer good-token")
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "API tokens not reloaded (the file changed)" in warning[0].getMessage()
    assert "still accepting the 1 token(s) of before" in warning[0].getMessage()
    assert "good-token" not in caplog.text and "spaces\n" not in caplog.text
    # Fixed: the next reload takes the file again.
    path.write_text("better-token\n")
    assert tokens.reload("SIGHUP")
    assert checker.allows("Bearer better-token") and not checker.allows("Bearer good-token")


def test_without_a_file_a_reload_changes_nothing(tmp_path, caplog):
    tokens = ApiTokens({"KIMBALL_API_TOKENS": ("t",)})
    with caplog.at_level(logging.INFO):
        assert not tokens.reload("SIGHUP")
    assert "no API token file to re-read" in caplog.text
    assert tokens.tokens.accepted == (b"t",)
