"""Mattermost incoming webhooks: Slack-compatible, but not Slack.

Mattermost renders Markdown (``**bold**``, ``[text](url)``), not Slack's mrkdwn, and ignores
Block Kit ``blocks``: the message is ``text`` plus Slack-style ``attachments`` (``color``,
``title``, ``title_link``, ``fields`` with ``short``), and ``props.card``, the longer Markdown
that Mattermost shows in its side panel. Mattermost answers 200 ``ok``.
"""

from __future__ import annotations

from typing import Any

from llmscope.alerter import messages as m
from llmscope.alerter.notifiers.base import Notification
from llmscope.alerter.notifiers.chat import JsonWebhookNotifier, cascade_line, shown, split_facts

TEXT_MAX = 16383  # Mattermost's post limit (older servers: 4,000)


def _md(text: str) -> str:
    # Emphasis and code characters in free text (error messages, prompts) stay literal. An
    # underscore inside a word (http_5xx) is no emphasis in CommonMark, and brackets not followed
    # by "(url)" are no link: both are left as written.
    for ch in ("\\", "*", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


class MattermostNotifier(JsonWebhookNotifier):
    """Posts to a Mattermost incoming-webhook URL (a secret)."""

    kind = "mattermost"
    what = "Mattermost webhook"

    def build_payload(self, notification: Notification) -> dict[str, Any]:
        n = notification
        text = f"#### {_md(n.title)}"
        if (line := cascade_line(n)) is not None:
            url = n.incident_url()
            text += f"\n**{_md(line)}**" + (f" [Open the incident]({url})" if url else "")
        alerts, more = shown(n)
        attachments: list[dict[str, Any]] = []
        card: list[str] = [f"### {_md(n.title)}"]
        for a, resolved in alerts:
            tone = "resolved" if resolved else m.tone([a.event])
            facts, links = split_facts(n, a)
            state = "Resolved" if resolved else "Firing"
            attachment: dict[str, Any] = {
                "fallback": f"{state}: {m.one_line(a.event)}",
                "color": m.colour(tone),
                "title": f"{state}: {a.event.provider}/{a.event.model}",
                "text": _md(dict(facts).get("What", m.one_line(a.event))),
                "fields": [{"short": False, "title": k, "value": _md(v)} for k, v in facts if k != "What"],
            }
            if links:
                attachment["title_link"] = links[0][1]
                attachment["fields"].append(
                    {"short": False, "title": "Links", "value": " | ".join(f"[{t}]({u})" for t, u in links)}
                )
            attachments.append(attachment)
            card.append(f"**{state}**")
            card.extend(f"- **{_md(k)}:** {_md(v)}" for k, v in facts)
            card.extend(f"- [{t}]({u})" for t, u in links)
        if more:
            text += f"\n_and {more} more_"
        return {
            "username": "LLMscope",
            "text": text[:TEXT_MAX],
            "attachments": attachments,
            "props": {"card": "\n".join(card)[:TEXT_MAX]},
        }
