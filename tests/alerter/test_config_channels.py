"""The channel kinds added for issue 8 in the config file, the environment and the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmscope.alerter.config import DEFAULT_RESEND_S, KINDS, Timings, build_runtime, load_file
from llmscope.alerter.notifiers.slack import DEFAULT_SLACK_API
from llmscope.config.env import ConfigError, Env


def test_file_channels_alertmanager_chats_and_slack_bot(tmp_path: Path) -> None:
    path = tmp_path / "alerter.yaml"
    path.write_text(
        "channels:\n"
        "  - {name: am, kind: alertmanager, url: http://am:9093, resend_interval: 30s}\n"
        "  - {name: am2, kind: alertmanager, url_env: AM_URL}\n"
        "  - {name: t, kind: teams, url_env: TEAMS}\n"
        "  - {name: d, kind: discord, url_env: DISCORD}\n"
        "  - {name: mm, kind: mattermost, url_env: MM}\n"
        "  - {name: bot, kind: slack, token_env: BOT, slack_channel: C0ONCALL}\n"
    )
    env = Env(
        {
            "AM_URL": "http://u:p@am:9093",
            "TEAMS": "https://t",
            "DISCORD": "https://d",
            "MM": "https://m",
            "BOT": "xoxb-1",
        }
    )
    ch = build_runtime(load_file(path), env, {}, timings=Timings()).channels
    assert (ch["am"].kind, ch["am"].resend_s, ch["am"].url.get()) == ("alertmanager", 30.0, "http://am:9093")
    assert (ch["am2"].resend_s, ch["am2"].url.get()) == (DEFAULT_RESEND_S, "http://u:p@am:9093")
    assert "u:p" not in repr(ch["am2"])  # the URL may carry credentials: a secret
    assert {ch[n].kind for n in ("t", "d", "mm")} == {"teams", "discord", "mattermost"}
    assert (ch["bot"].token.get(), ch["bot"].slack_channel, ch["bot"].api_url) == (
        "xoxb-1",
        "C0ONCALL",
        DEFAULT_SLACK_API,
    )
    assert not ch["bot"].url
    path.write_text("channels:\n  - {name: bot, kind: slack, token_env: BOT}\n")
    with pytest.raises(ConfigError, match="slack_channel"):
        build_runtime(load_file(path), env, {}, timings=Timings())
    path.write_text("channels:\n  - {name: s, kind: slack}\n")
    with pytest.raises(ConfigError, match="url_env"):
        build_runtime(load_file(path), env, {}, timings=Timings())


def test_environment_and_settings_channels() -> None:
    env = Env(
        {
            "LLMSCOPE_ALERTMANAGER_URL": "http://am:9093",
            "LLMSCOPE_ALERTMANAGER_RESEND_S": "45",
            "LLMSCOPE_TEAMS_WEBHOOK_URL": "https://t",
            "LLMSCOPE_SLACK_BOT_TOKEN": "xoxb-2",
            "LLMSCOPE_SLACK_CHANNEL": "C1",
        }
    )
    ch = build_runtime(None, env, {}, timings=Timings()).channels
    assert (ch["alertmanager"].resend_s, ch["teams"].kind, ch["slack"].token.get()) == (
        45.0,
        "teams",
        "xoxb-2",
    )
    assert all(c.enabled for c in ch.values())
    with pytest.raises(ConfigError, match="LLMSCOPE_SLACK_CHANNEL"):
        build_runtime(None, Env({"LLMSCOPE_SLACK_BOT_TOKEN": "x"}), {}, timings=Timings())
    # The API's settings: off without their switch, as every channel set up there
    settings: dict[str, object] = {
        "alert.alertmanager.url": '"http://am2:9093"',
        "alert.discord.webhook_url": '"https://d"',
        "alert.mattermost.webhook_url": '"https://m"',
        "alert.mattermost.enabled": "true",
    }
    ch = build_runtime(None, env, settings, timings=Timings()).channels
    assert (ch["alertmanager"].url.get(), ch["alertmanager"].resend_s) == ("http://am2:9093", 45.0)
    assert not ch["alertmanager"].enabled
    assert not ch["discord"].enabled
    assert ch["mattermost"].enabled
    assert ch["teams"].enabled  # from the environment: no switch needed
    # a bot token from the settings threads Slack (the webhook URL, if any, is then unused)
    bot = {"alert.slack.bot_token": '"xoxb-3"', "alert.slack.channel": '"C9"', "alert.slack.enabled": "true"}
    slack = build_runtime(None, Env({}), bot, timings=Timings()).channels["slack"]
    assert (slack.token.get(), slack.slack_channel, slack.enabled) == ("xoxb-3", "C9", True)
    # an explicit switch off disables the kind wherever it came from
    off = build_runtime(None, env, {"alert.teams.enabled": "false"}, timings=Timings()).channels
    assert not off["teams"].enabled
    assert set(KINDS) >= {"alertmanager", "teams", "discord", "mattermost"}
